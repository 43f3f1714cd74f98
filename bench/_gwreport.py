"""The gateway benchmark's medians, ratios, targets, warnings and printed report."""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

# The targets of issue 11 (mTLS and a token check on every call): at least 1.2x the
# monolith's throughput with a p99 no worse than its.
RPS_RATIO_MIN = 1.2
P99_RATIO_MAX = 1.0
# Above this, other processes took enough of the 2 cores to move the figures.
NOISY_OTHER_CORES = 0.25
# Throughput ratio and CPU-per-request ratio further apart than this: something besides
# the two targets' own cost (neighbours, a saturated wrk) moved one of them.
RATIO_DISAGREEMENT = 0.15

TARGETS = ("gateway", "monolith")
_METRICS = ("requests_per_s", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms")


def _median(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.median(present) if present else None


def median_of(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median over the rounds (figure by figure, not one round's)."""
    merged: dict[str, Any] = {m: _median([r[m] for r in rounds]) for m in _METRICS}
    merged["requests"] = sum(r["requests"] for r in rounds)
    merged["non_2xx"] = sum(r["non_2xx"] for r in rounds)
    merged["socket_errors"] = sum(sum(r["socket_errors"].values()) for r in rounds)
    cpus = [r["cpu"] for r in rounds if r.get("cpu")]
    if cpus:
        names = list(cpus[0]["cores"])
        merged["cpu"] = {
            "cores": {n: _median([c["cores"].get(n) for c in cpus]) for n in names},
            "machine_busy_cores": _median([c["machine_busy_cores"] for c in cpus]),
            "serving_cores": _median([c["serving_cores"] for c in cpus]),
            "serving_us_per_request": _median([c["serving_us_per_request"] for c in cpus]),
            "postgres_us_per_request": _median([c["postgres_us_per_request"] for c in cpus]),
            "by_group_us_per_request": {
                n: _median([c["by_group_us_per_request"].get(n) for c in cpus])
                for n in cpus[0]["by_group_us_per_request"]
            },
        }
    return merged


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def ratios(gateway: dict[str, Any], monolith: dict[str, Any]) -> dict[str, float | None]:
    g_cpu, m_cpu = gateway.get("cpu") or {}, monolith.get("cpu") or {}
    return {
        "rps": _ratio(gateway["requests_per_s"], monolith["requests_per_s"]),
        "p50": _ratio(gateway["p50_ms"], monolith["p50_ms"]),
        "p99": _ratio(gateway["p99_ms"], monolith["p99_ms"]),
        # The throughput ratio the serving CPU per request predicts when both are
        # CPU-bound on the same cores: less moved by what else ran on the machine.
        "rps_by_cpu": _ratio(
            m_cpu.get("serving_us_per_request"), g_cpu.get("serving_us_per_request")
        ),
    }


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    r = results.get("ratios") or {}
    medians = results.get("medians") or {}
    errors = sum(
        medians[t]["non_2xx"] + medians[t]["socket_errors"] for t in TARGETS if t in medians
    )
    return [
        _target("gateway req/s / monolith req/s", r.get("rps"), ">=", RPS_RATIO_MIN),
        _target("gateway p99 / monolith p99", r.get("p99"), "<=", P99_RATIO_MAX),
        _target("non-2xx responses and socket errors (measured)", errors, "<=", 0),
        # Not the target: the same ratio from CPU cost, which noise moves less.
        _target(
            "cross-check: req/s ratio predicted by serving CPU per request",
            r.get("rps_by_cpu"),
            ">=",
            RPS_RATIO_MIN,
            check=True,
        ),
    ]


def missed(results: dict[str, Any]) -> bool:
    """Whether a target, or the CPU cross-check of the req/s one, failed."""
    return not all(t["pass"] for t in results.get("targets") or [])


def _target(
    what: str, value: float | None, op: str, limit: float, *, check: bool = False
) -> dict[str, Any]:
    passed = value is not None and (value >= limit if op == ">=" else value <= limit)
    return {"what": what, "value": value, "op": op, "limit": limit, "pass": passed, "check": check}


def notes(results: dict[str, Any]) -> list[str]:
    """What makes a figure of this run doubtful, or explains it."""
    found = []
    noisy = []
    for phase in results.get("phases") or []:
        if phase["non_2xx"] or sum(phase["socket_errors"].values()):
            found.append(
                f"round {phase['round']} {phase['target']}: {phase['non_2xx']} non-2xx, "
                f"socket errors {phase['socket_errors']}"
            )
        other = (phase.get("cpu") or {}).get("cores", {}).get("other")
        if other is not None and other > NOISY_OTHER_CORES:
            noisy.append(f"round {phase['round']} {phase['target']} {other:.2f}")
    if noisy:
        found.append(
            f"noisy machine: other processes used more than {NOISY_OTHER_CORES} cores in "
            f"{len(noisy)} phase(s) (cores): {', '.join(noisy)}; rerun on a quieter machine "
            "to trust small differences"
        )
    r = results.get("ratios") or {}
    by_rate, by_cpu = r.get("rps"), r.get("rps_by_cpu")
    if by_rate and by_cpu and abs(by_rate / by_cpu - 1) > RATIO_DISAGREEMENT:
        found.append(
            f"gateway / monolith is {by_rate:.2f} by req/s but {by_cpu:.2f} by serving CPU per "
            "request: the two did not get the same CPU (other people's processes take a "
            "share per runnable thread, and the gateway path has more of them); the CPU "
            "figure is the steadier one"
        )
        if (by_rate >= RPS_RATIO_MIN) != (by_cpu >= RPS_RATIO_MIN):
            found.append(
                f"the req/s verdict ({by_rate:.2f}) and the one the CPU cost predicts "
                f"({by_cpu:.2f}) fall on different sides of {RPS_RATIO_MIN}: this run's "
                "verdict is an artefact of the noise; rerun on a quiet machine"
            )
    before = results.get("machine", {}).get("busy_cores_before")
    if before is not None and before > NOISY_OTHER_CORES:
        found.append(
            f"before the benchmark started anything, the machine was already {before:.2f} "
            "cores busy with other work"
        )
    if results.get("config", {}).get("rounds", 1) < 3:
        found.append("fewer than 3 rounds: a median of so few is itself noisy")
    return found


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


_CORE_COLUMNS = ("gateway", "users", "monolith", "postgres", "wrk", "harness", "other")


def _header() -> str:
    cores = "".join(f"{name[:8]:>9}" for name in _CORE_COLUMNS)
    return (
        f"  {'':<20}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'p99.9':>8}{'n2xx':>6}{'err':>5}"
        f"{'µs/req':>8}{cores}"
    )


def _line(label: str, phase: dict[str, Any]) -> str:
    cpu = phase.get("cpu") or {}
    cores = cpu.get("cores") or {}
    errors = phase["socket_errors"]
    if isinstance(errors, dict):
        errors = sum(errors.values())
    return (
        f"  {label:<20}{_fmt(phase['requests_per_s'], 0):>9}{_fmt(phase['p50_ms']):>9}"
        f"{_fmt(phase['p99_ms']):>9}{_fmt(phase['p999_ms'], 1):>8}{phase['non_2xx']:>6}"
        f"{errors:>5}{_fmt(cpu.get('serving_us_per_request'), 0):>8}"
        + "".join(f"{_fmt(cores.get(name)):>9}" for name in _CORE_COLUMNS)
    )


def render(results: dict[str, Any]) -> str:
    machine = results["machine"]
    config = results["config"]
    out = [
        "",
        "Tandem gateway benchmark: GET /v1/users/{id}, authenticated, at "
        f"{config['connections']} connections",
        "  gateway path: wrk -> gateway (1 process) -> users service (1 process) -> PostgreSQL",
        "  monolith:     wrk -> FastAPI + SQLAlchemy app (uvicorn, 2 workers) -> PostgreSQL",
        "",
    ]
    out.append(
        f"machine   {machine['cores']} cores ({machine['cpu_model']}), Linux "
        f"{machine['kernel']}, Python {machine['python']}, {machine.get('wrk', 'wrk ?')}, "
        f"FastAPI {machine.get('fastapi', '?')}, uvicorn {machine.get('uvicorn', '?')}, "
        f"grpcio {machine['grpcio']}, SQLAlchemy {machine['sqlalchemy']}, asyncpg "
        f"{machine['asyncpg']}, uvloop {machine['uvloop']}, PostgreSQL "
        f"{machine.get('postgresql', '?')}"
    )
    load = ", ".join(f"{v:.2f}" for v in machine["load_avg_at_start"])
    out.append(
        f"run       {config['users']:,} users seeded, {config['sample_ids']:,} random ids "
        f"requested; {config['rounds']} round(s) of {config['duration']} s per target after "
        f"{config['warmup']} s warm-up each, order alternating (ABBA); load average at "
        f"start {load}, {_fmt(machine.get('busy_cores_before'))} cores busy before it began; "
        f"took {results.get('elapsed_s', 0):.0f} s"
    )
    settings = {**config.get("gateway_env", {}), **config.get("monolith_env", {})}
    if settings:
        out.append("settings  " + ", ".join(f"{k}={v}" for k, v in settings.items()))
    seed = results.get("seed")
    if seed:
        out.append(
            f"seed      {seed['users']:,} rows: "
            + ", ".join(
                f"{k.removesuffix('_s')} {v:.1f} s" for k, v in seed.items() if k != "users"
            )
        )
    out += [
        "",
        "Each phase (wrk, closed loop; latency as wrk measures it)",
        "  µs/req: CPU of the serving processes per request (gateway + users, or the",
        "  monolith's supervisor and workers); the other columns are cores used in the",
        "  window: each server, PostgreSQL backends of the run's database, wrk, this",
        "  harness, and other = the rest of the machine (other people's work: noise).",
        "  The stack that is not measured idles; its (near zero) cores are its column.",
        _header(),
    ]
    for phase in results.get("phases") or []:
        out.append(_line(f"r{phase['round']} {phase['target']}", phase))
    medians = results.get("medians") or {}
    if medians:
        out.append("  " + "-" * 20)
        for name in TARGETS:
            if name in medians:
                out.append(_line(f"median {name}", medians[name]))
    r = results.get("ratios") or {}
    if r:
        g = (medians.get("gateway") or {}).get("cpu") or {}
        m = (medians.get("monolith") or {}).get("cpu") or {}
        split = ", ".join(
            f"{k} {_fmt(v, 0)}" for k, v in (g.get("by_group_us_per_request") or {}).items()
        )
        out += [
            "",
            f"gateway / monolith: req/s x{_fmt(r.get('rps'))}, p50 x{_fmt(r.get('p50'))}, "
            f"p99 x{_fmt(r.get('p99'))}; req/s predicted by serving CPU per request "
            f"x{_fmt(r.get('rps_by_cpu'))}",
            f"CPU per request (µs): gateway path {_fmt(g.get('serving_us_per_request'), 0)} "
            f"({split}), monolith {_fmt(m.get('serving_us_per_request'), 0)}; PostgreSQL "
            f"{_fmt(g.get('postgres_us_per_request'), 0)} / "
            f"{_fmt(m.get('postgres_us_per_request'), 0)}",
        ]
    coalescing = results.get("coalescing")
    if coalescing:
        reads, calls = coalescing["reads"], coalescing["calls"]
        out.append(
            f"coalescing: the gateway answered {reads:,} account reads with {calls:,} users "
            f"calls ({reads / max(calls, 1):.1f} reads per call; all its phases, warm-ups "
            "included): concurrent reads share one BatchGetUsers (gateway/readers.py)"
        )
    out += _render_profiles(results.get("profile") or {})
    out += ["", "Targets"]
    for target in results.get("targets") or []:
        verdict = "pass" if target["pass"] else "fail"
        verdict = verdict if target.get("check") else verdict.upper()
        digits = 0 if target["limit"] == 0 else 2
        out.append(
            f"  {verdict}  {target['what']}: {_fmt(target['value'], digits)} "
            f"(target {target['op']} {target['limit']:g})"
        )
    if results.get("notes"):
        out += ["", "Notes"]
        out += [f"  - {note}" for note in results["notes"]]
    out.append("")
    return "\n".join(out)


def _render_profiles(profiles: dict[str, Any]) -> list[str]:
    if isinstance(profiles.get("note"), str):
        return ["", f"profile: {profiles['note']}"]
    processes: dict[str, dict[str, Any]] = {}
    for side in TARGETS:
        processes.update((profiles.get(side) or {}).get("processes") or {})
    if not processes:
        return []
    out = [
        "",
        "Where the CPU goes (py-spy under each target's load): µs per request by package,",
        "  = share of the process's samples x its measured CPU per request. Time in C code",
        "  (syscalls included) counts for the Python frame that called it; 'native under",
        "  the loop' is uvloop, grpc's and asyncpg's compiled callbacks with no Python above.",
    ]
    for label, summary in processes.items():
        total = summary.get("us_per_request")
        out.append(
            f"  {label}: {_fmt(total, 0)} µs/request; {summary['samples']} samples, "
            f"{summary['busy_threads']:.2f} threads busy on average"
        )
        out.append(
            "    "
            + ", ".join(f"{e['name']} {e['us']:.0f}" for e in summary.get("us_by_package") or [])
        )
    for label in ("gateway", "users service"):
        if label not in processes:
            continue
        summary = processes[label]
        total = summary.get("us_per_request") or 0.0
        out.append(f"  {label}, own time by function (µs/request):")
        out += [
            f"    {e['share'] * total:6.0f}  {e['name']}" for e in summary["self_by_function"][:12]
        ]
        out.append(f"  {label}, including callees (µs/request):")
        out += [
            f"    {e['share'] * total:6.0f}  {e['name']}"
            for e in summary["inclusive_by_function"][:18]
        ]
    return out
