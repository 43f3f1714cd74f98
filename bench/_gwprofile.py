"""Where the gateway path and the monolith spend their CPU: py-spy under the benchmark's load.

Each target is loaded by wrk as in a measured phase while py-spy samples each of its
serving processes (the gateway and the users service; the monolith's two workers, whose
stacks are added up). The share of samples by package, times the process's measured CPU
per request in that phase, gives microseconds per request by package: the two sides'
costs in one unit, side by side.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Mapping, Sequence
from pathlib import Path
from typing import Any, TypedDict

import _profile
from _gwload import WrkResult

RATE_HZ = 200
TOP_PACKAGES = 14

Load = Callable[[str, int], Coroutine[Any, Any, WrkResult]]


class PackageCost(TypedDict):
    name: str
    us: float


class ProcessProfile(_profile.Summary):
    # The process's measured CPU per request in the profiled phase.
    us_per_request: float | None
    us_by_package: list[PackageCost]


class PhaseBrief(TypedDict):
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    non_2xx: int


class TargetProfile(TypedDict):
    target: str
    phase: PhaseBrief
    py_spy: list[str]
    processes: dict[str, ProcessProfile]


async def profile(
    py_spy: str,
    load: Load,
    *,
    target: str,
    processes: Mapping[str, Sequence[int]],
    groups: Mapping[str, str],
    duration: int,
    folder: Path,
) -> TargetProfile:
    """Sample `processes` (label -> pids) while `load(target, seconds)` runs.

    `groups` names, for each label, the CPU group of the phase that holds its CPU
    (e.g. "users service" -> "users").
    """
    _make_folder(folder)
    # A little longer than py-spy, so that every sample falls inside the load.
    running = asyncio.create_task(load(target, duration + 3))
    await asyncio.sleep(1)
    raws: dict[str, list[Path]] = {}
    recordings = []
    for label, pids in processes.items():
        raws[label] = [folder / f"{label.replace(' ', '_')}_{pid}.txt" for pid in pids]
        recordings += [
            _profile.record(py_spy, pid, duration, raw, RATE_HZ)
            for pid, raw in zip(pids, raws[label], strict=True)
        ]
    messages = await asyncio.gather(*recordings)
    phase = await running
    cpu = phase["cpu"]
    requests = phase["requests"]
    profiles: dict[str, ProcessProfile] = {}
    for label, paths in raws.items():
        merged = _merge(paths, folder / f"{label.replace(' ', '_')}.txt")
        summary = _profile.summarise(merged, rate=RATE_HZ, duration=duration)
        cores = cpu["cores"].get(groups[label]) if cpu is not None else None
        window = cpu["window_s"] if cpu is not None else 0.0
        us = cores * window / requests * 1e6 if cores and requests else None
        profiles[label] = {
            **summary,
            "us_per_request": us,
            "us_by_package": [
                {"name": e["name"], "us": e["share"] * us}
                for e in summary["self_by_package"][:TOP_PACKAGES]
                if us is not None
            ],
        }
    return {
        "target": target,
        "phase": {
            "requests_per_s": phase["requests_per_s"],
            "p50_ms": phase["p50_ms"],
            "p99_ms": phase["p99_ms"],
            "non_2xx": phase["non_2xx"],
        },
        "py_spy": [m.splitlines()[-1] for m in messages if m],
        "processes": profiles,
    }


def _make_folder(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)


def _merge(paths: Sequence[Path], merged: Path) -> Path:
    """One file of collapsed stacks from several processes' (their counts add up).

    Deepest stacks first: _profile.summarise takes the event loop's frames shared by
    all stacks from the first one it meets, and a first stack that ends in the loop
    itself would leave the loop's native time unlabelled.
    """
    lines = [line for p in paths for line in p.read_text().splitlines() if line.strip()]
    lines.sort(key=lambda line: line.count(";"), reverse=True)
    merged.write_text("".join(f"{line}\n" for line in lines))
    return merged
