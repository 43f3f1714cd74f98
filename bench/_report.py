"""What every benchmark's report shares: the median of rounds, targets, notes, printing.

The median of rounds, the one rule of every report here: of the rounds of one phase,
the round with the median throughput stands for them all, with every figure it
measured (of an even number of rounds, the faster of the middle two). Its latencies,
CPU per call and ratios are then those of one run, consistent with each other, which
medians taken figure by figure would not be: they could pair one round's throughput
with another's p99 and a third one's CPU. Errors are no figure of a round: a target on
them counts the errors of every measured round.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import statistics
import sys
from collections.abc import Callable, Coroutine, Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, TypedDict, TypeVar

from _facts import Machine

R = TypeVar("R")
P = TypeVar("P")

# Above this, other processes took enough CPU to move the figures.
NOISY_OTHER_CORES = 0.25
# Two ratios that should agree (one by throughput, one by CPU per call) further apart
# than this: something besides the two phases' own cost moved one of them.
RATIO_DISAGREEMENT = 0.15

# A target and its verdict; `check` marks a cross-check that is not itself a target.
Target = TypedDict(
    "Target",
    {
        "what": str,
        "value": float | None,
        "op": Literal[">=", "<="],
        "limit": float,
        "pass": bool,
        "check": bool,
    },
)


class Seed(TypedDict):
    users: int
    # Seconds each step of the seeding took (copy, index, vacuum).
    timings: dict[str, float]


def median_round(rounds: Sequence[P], throughput: Callable[[P], float]) -> P:
    """The round that stands for `rounds`: the one with the median throughput."""
    if not rounds:
        raise ValueError("no rounds to take the median of")
    return sorted(rounds, key=throughput)[len(rounds) // 2]


def median_known(values: Iterable[float | None]) -> float | None:
    """The median of the values known; None if none is."""
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def target(
    what: str, value: float | None, op: Literal[">=", "<="], limit: float, *, check: bool = False
) -> Target:
    passed = value is not None and (value >= limit if op == ">=" else value <= limit)
    return {"what": what, "value": value, "op": op, "limit": limit, "pass": passed, "check": check}


def missed(targets: Iterable[Target]) -> bool:
    """Whether a target, or a cross-check, failed."""
    return not all(t["pass"] for t in targets)


def disagree(a: float, b: float) -> bool:
    """Whether two ratios that measure the same thing differently are too far apart."""
    return abs(a / b - 1) > RATIO_DISAGREEMENT


def noisy_note(noisy: Sequence[str]) -> list[str]:
    """The note for phases in which other processes took more than NOISY_OTHER_CORES."""
    if not noisy:
        return []
    return [
        f"noisy machine: other processes used more than {NOISY_OTHER_CORES} cores in "
        f"{len(noisy)} phase(s) (cores): {', '.join(noisy)}; rerun on a quieter machine "
        "to trust small differences"
    ]


def fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def timings(values: dict[str, float]) -> str:
    return ", ".join(f"{k.removesuffix('_s')} {v:.1f} s" for k, v in values.items())


def machine_line(machine: Machine, names: Sequence[str]) -> str:
    """The machine, and the versions of `names` (keys of its `versions`)."""
    versions = machine["versions"]
    return (
        f"machine   {machine['cores']} cores ({machine['cpu_model']}), Linux "
        f"{machine['kernel']}, Python {machine['python']}, "
        + ", ".join(f"{name} {versions.get(name, '?')}" for name in names)
    )


def load_average(machine: Machine) -> str:
    return ", ".join(f"{v:.2f}" for v in machine["load_avg_at_start"])


def seed_line(seed: Seed) -> str:
    return f"seed      {seed['users']:,} rows: {timings(seed['timings'])}"


def render_verdicts(targets: Sequence[Target], notes: Sequence[str]) -> list[str]:
    """The Targets section, then the Notes (if any), as every report ends."""
    out = ["", "Targets"]
    for t in targets:
        verdict = "pass" if t["pass"] else "fail"
        verdict = verdict if t["check"] else verdict.upper()
        digits = 0 if t["limit"] == 0 else 2
        out.append(
            f"  {verdict}  {t['what']}: {fmt(t['value'], digits)} (target {t['op']} {t['limit']:g})"
        )
    if notes:
        out += ["", "Notes"]
        out += [f"  - {note}" for note in notes]
    out.append("")
    return out


def _json_default(value: object) -> object:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return str(value)


def run_and_report(
    run: Coroutine[Any, Any, R],
    render: Callable[[R], str],
    json_path: str | Path | None,
    log: Callable[[str], None],
) -> int:
    """Run a benchmark, print its report and write its results as JSON if asked to."""
    try:
        results = asyncio.run(run)
    except (KeyboardInterrupt, asyncio.CancelledError):
        log("interrupted")
        return 130
    sys.stdout.write(render(results))
    if json_path:
        text = json.dumps(results, indent=2, default=_json_default)
        Path(json_path).write_text(text + "\n")
        log(f"results written to {json_path}")
    return 0
