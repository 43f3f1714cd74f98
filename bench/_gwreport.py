"""The gateway benchmark's results, ratios, targets, warnings and printed report."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

import _gwload
import _gwobserve
import _report
from _config import GatewayConfig
from _facts import Machine
from _gwload import WrkCpu, WrkResult
from _gwprofile import TargetProfile
from _gwstack import Coalescing
from _report import Seed, Target, fmt, target

# The targets of issue 11 (mTLS and a token check on every call): at least 1.2x the
# monolith's throughput with a p99 no worse than its.
RPS_RATIO_MIN = 1.2
P99_RATIO_MAX = 1.0

TARGETS = ("gateway", "monolith")
VERSIONS = ("wrk", "FastAPI", "uvicorn", "grpcio", "SQLAlchemy", "asyncpg", "uvloop", "PostgreSQL")


class Warmup(TypedDict):
    requests_per_s: float
    non_2xx: int
    socket_errors: dict[str, int]


class Round(WrkResult):
    """One measured phase: one target in one round, after its warm-up."""

    round: int
    warmup: Warmup


class Ratios(TypedDict):
    """Gateway over monolith, of their median rounds; req/s paired by round."""

    # The median over the rounds of the gateway's req/s over the monolith's in the same
    # round: phases seconds apart share the machine's speed, which drifts by more than
    # the margins measured within a minute (bench/_gwobserve.py).
    rps: float | None
    p50: float | None
    p99: float | None
    # The throughput ratio the serving CPU per request predicts when both are CPU-bound
    # on the same cores: less moved by what else ran on the machine.
    rps_by_cpu: float | None


class Profiles(TypedDict):
    raw_stacks: str | None
    gateway: TargetProfile
    monolith: TargetProfile


class Results(TypedDict):
    machine: Machine
    config: GatewayConfig
    seed: Seed
    transport: str
    ports: dict[str, int]
    phases: list[Round]
    # The median round of each target (bench/_report.py's rule).
    medians: dict[str, Round]
    ratios: Ratios
    targets: list[Target]
    # What py-spy found, or why it did not run; None when it was not asked to.
    profile: Profiles | str | None
    # What metrics and traces cost (bench/_gwobserve.py); None with --no-observability.
    observability: _gwobserve.Observability | None
    # From the gateway's line at exit; None if it did not write one.
    coalescing: Coalescing | None
    elapsed_s: float
    notes: list[str]


def medians(phases: Sequence[Round]) -> dict[str, Round]:
    return {
        name: _report.median_round([p for p in phases if p["target"] == name], _requests_per_s)
        for name in TARGETS
    }


def _requests_per_s(phase: Round) -> float:
    return phase["requests_per_s"]


def _serving_us(cpu: WrkCpu | None) -> float | None:
    return cpu["serving_us_per_request"] if cpu is not None else None


def ratios(phases: Sequence[Round], gateway: Round, monolith: Round) -> Ratios:
    """`gateway` and `monolith`: the median rounds of `phases`."""
    by_round: dict[int, dict[str, float]] = {}
    for phase in phases:
        by_round.setdefault(phase["round"], {})[phase["target"]] = phase["requests_per_s"]
    paired = [_report.ratio(r["gateway"], r["monolith"]) for r in by_round.values() if len(r) == 2]
    return {
        "rps": _report.median_known(paired),
        "p50": _report.ratio(gateway["p50_ms"], monolith["p50_ms"]),
        "p99": _report.ratio(gateway["p99_ms"], monolith["p99_ms"]),
        "rps_by_cpu": _report.ratio(_serving_us(monolith["cpu"]), _serving_us(gateway["cpu"])),
    }


def targets(phases: Sequence[Round], r: Ratios) -> list[Target]:
    errors = sum(_gwload.errors(phase) for phase in phases)
    return [
        target("gateway req/s / monolith req/s", r["rps"], ">=", RPS_RATIO_MIN),
        target("gateway p99 / monolith p99", r["p99"], "<=", P99_RATIO_MAX),
        target("non-2xx responses and socket errors (measured)", errors, "<=", 0),
        # Not the target: the same ratio from CPU cost, which noise moves less.
        target(
            "cross-check: req/s ratio predicted by serving CPU per request",
            r["rps_by_cpu"],
            ">=",
            RPS_RATIO_MIN,
            check=True,
        ),
    ]


def notes(phases: Sequence[Round], r: Ratios, machine: Machine, rounds: int) -> list[str]:
    """What makes a figure of this run doubtful, or explains it."""
    found = []
    noisy = []
    for phase in phases:
        name = f"round {phase['round']} {phase['target']}"
        if _gwload.errors(phase):
            found.append(
                f"{name}: {phase['non_2xx']} non-2xx, socket errors {phase['socket_errors']}"
            )
        other = phase["cpu"]["cores"].get("other") if phase["cpu"] is not None else None
        if other is not None and other > _report.NOISY_OTHER_CORES:
            noisy.append(f"{name} {other:.2f}")
    found += _report.noisy_note(noisy)
    by_rate, by_cpu = r["rps"], r["rps_by_cpu"]
    if by_rate and by_cpu and _report.disagree(by_rate, by_cpu):
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
    before = machine.get("busy_cores_before")
    if before is not None and before > _report.NOISY_OTHER_CORES:
        found.append(
            f"before the benchmark started anything, the machine was already {before:.2f} "
            "cores busy with other work"
        )
    if rounds < 3:
        found.append("fewer than 3 rounds: a median of so few is itself noisy")
    return found


_CORE_COLUMNS = ("gateway", "users", "monolith", "postgres", "wrk", "harness", "other")


def _header() -> str:
    cores = "".join(f"{name[:8]:>9}" for name in _CORE_COLUMNS)
    return (
        f"  {'':<20}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'p99.9':>8}{'n2xx':>6}{'err':>5}"
        f"{'µs/req':>8}{cores}"
    )


def _line(label: str, phase: Round) -> str:
    cpu = phase["cpu"]
    cores = cpu["cores"] if cpu is not None else {}
    return (
        f"  {label:<20}{fmt(phase['requests_per_s'], 0):>9}{fmt(phase['p50_ms']):>9}"
        f"{fmt(phase['p99_ms']):>9}{fmt(phase['p999_ms'], 1):>8}{phase['non_2xx']:>6}"
        f"{sum(phase['socket_errors'].values()):>5}{fmt(_serving_us(cpu), 0):>8}"
        + "".join(f"{fmt(cores.get(name)):>9}" for name in _CORE_COLUMNS)
    )


def render(results: Results) -> str:
    machine = results["machine"]
    config = results["config"]
    out = [
        "",
        "Tandem gateway benchmark: GET /v1/users/{id}, authenticated, at "
        f"{config.connections} connections",
        "  gateway path: wrk -> gateway (1 process) -> users service (1 process) -> PostgreSQL",
        "  monolith:     wrk -> FastAPI + SQLAlchemy app (uvicorn, 2 workers) -> PostgreSQL",
        "",
        _report.machine_line(machine, VERSIONS),
        f"run       {config.users:,} users seeded, {config.sample_ids:,} random ids "
        f"requested; {config.rounds} round(s) of {config.duration} s per target after "
        f"{config.warmup} s warm-up each, order alternating (ABBA); load average at start "
        f"{_report.load_average(machine)}, {fmt(machine.get('busy_cores_before'))} cores "
        f"busy before it began; took {results['elapsed_s']:.0f} s",
    ]
    settings = {**config.gateway_env, **config.monolith_env}
    if settings:
        out.append("settings  " + ", ".join(f"{k}={v}" for k, v in settings.items()))
    out += [
        _report.seed_line(results["seed"]),
        "",
        "Each phase (wrk, closed loop; latency as wrk measures it)",
        "  µs/req: CPU of the serving processes per request (gateway + users, or the",
        "  monolith's supervisor and workers); the other columns are cores used in the",
        "  window: each server, PostgreSQL backends of the run's database, wrk, this",
        "  harness, and other = the rest of the machine (other people's work: noise).",
        "  The stack that is not measured idles; its (near zero) cores are its column.",
        _header(),
    ]
    out += [_line(f"r{p['round']} {p['target']}", p) for p in results["phases"]]
    out.append("  " + "-" * 20)
    out += [_line(f"median {name}", phase) for name, phase in results["medians"].items()]
    r = results["ratios"]
    g, m = results["medians"]["gateway"]["cpu"], results["medians"]["monolith"]["cpu"]
    split = ", ".join(
        f"{k} {fmt(v, 0)}" for k, v in (g["by_group_us_per_request"] if g else {}).items()
    )
    out += [
        "",
        f"gateway / monolith: req/s x{fmt(r['rps'])} (median of the rounds' ratios), "
        f"p50 x{fmt(r['p50'])}, p99 x{fmt(r['p99'])}; req/s predicted by serving CPU per request "
        f"x{fmt(r['rps_by_cpu'])}",
        f"CPU per request (µs): gateway path {fmt(_serving_us(g), 0)} ({split}), monolith "
        f"{fmt(_serving_us(m), 0)}; PostgreSQL "
        f"{fmt(g['postgres_us_per_request'] if g else None, 0)} / "
        f"{fmt(m['postgres_us_per_request'] if m else None, 0)}",
    ]
    coalescing = results["coalescing"]
    if coalescing:
        reads, calls = coalescing["reads"], coalescing["calls"]
        out.append(
            f"coalescing: the gateway answered {reads:,} account reads with {calls:,} users "
            f"calls ({reads / max(calls, 1):.1f} reads per call; all its phases, warm-ups "
            "included): concurrent reads share one BatchGetUsers (gateway/readers.py)"
        )
    out += _gwobserve.render(results["observability"])
    out += _render_profiles(results["profile"])
    out += _report.render_verdicts(results["targets"], results["notes"])
    return "\n".join(out)


def _render_profiles(profiles: Profiles | str | None) -> list[str]:
    if profiles is None:
        return []
    if isinstance(profiles, str):
        return ["", f"profile: {profiles}"]
    processes = {**profiles["gateway"]["processes"], **profiles["monolith"]["processes"]}
    out = [
        "",
        "Where the CPU goes (py-spy under each target's load): µs per request by package,",
        "  = share of the process's samples x its measured CPU per request. Time in C code",
        "  (syscalls included) counts for the Python frame that called it; 'native under",
        "  the loop' is uvloop, grpc's and asyncpg's compiled callbacks with no Python above.",
    ]
    for label, summary in processes.items():
        out.append(
            f"  {label}: {fmt(summary['us_per_request'], 0)} µs/request; {summary['samples']} "
            f"samples, {summary['busy_threads']:.2f} threads busy on average"
        )
        out.append(
            "    " + ", ".join(f"{e['name']} {e['us']:.0f}" for e in summary["us_by_package"])
        )
    for label in ("gateway", "users service"):
        if label not in processes:
            continue
        summary = processes[label]
        total = summary["us_per_request"] or 0.0
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
