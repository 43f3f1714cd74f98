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
from typing import Any

import _profile

RATE_HZ = 200
TOP_PACKAGES = 14

Load = Callable[[str, int], Coroutine[Any, Any, dict[str, Any]]]


async def profile(
    py_spy: str,
    load: Load,
    *,
    target: str,
    processes: Mapping[str, Sequence[int]],
    groups: Mapping[str, str],
    duration: int,
    folder: Path,
) -> dict[str, Any]:
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
    cpu = phase.get("cpu") or {}
    requests = phase["requests"]
    window = cpu.get("window_s") or 0.0
    found: dict[str, Any] = {
        "target": target,
        "phase": {k: phase[k] for k in ("requests_per_s", "p50_ms", "p99_ms", "non_2xx")},
        "py_spy": [m.splitlines()[-1] for m in messages if m],
        "processes": {},
    }
    for label, paths in raws.items():
        merged = _merge(paths, folder / f"{label.replace(' ', '_')}.txt")
        summary = _profile.summarise(merged, rate=RATE_HZ, duration=duration)
        cores = (cpu.get("cores") or {}).get(groups[label])
        us_per_request = cores * window / requests * 1e6 if cores and requests else None
        summary["us_per_request"] = us_per_request
        summary["us_by_package"] = [
            {"name": e["name"], "us": e["share"] * us_per_request}
            for e in summary["self_by_package"][:TOP_PACKAGES]
            if us_per_request is not None
        ]
        found["processes"][label] = summary
    return found


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
