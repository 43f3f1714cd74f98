"""The users benchmark's results, targets, warnings about the run, and printed report."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TypedDict

import _report
from _config import UsersConfig
from _facts import Argon2Cost, Machine
from _phases import Baselines, Interference, ListUsers, Phase, Profile, Tokens, us_per_call
from _report import Seed, Target, fmt, target

# The targets.
GETUSER_PER_EMPTY_MIN = 0.30
DEEP_PER_PAGE1_MAX = 1.5
INTERFERENCE_P99_MAX = 5.0
# Above this the load generator may be what limits the empty RPC.
CLIENT_SATURATED_CORES = 0.9
VERSIONS = ("grpcio", "SQLAlchemy", "asyncpg", "uvloop", "protobuf", "PostgreSQL")


class Results(TypedDict):
    machine: Machine
    config: UsersConfig
    argon2: Argon2Cost
    migrate_s: float
    seed: Seed
    getuser: list[Baselines]
    list_users: ListUsers
    interference: Interference
    tokens: Tokens
    create_user: Phase
    profile: Profile | None
    elapsed_s: float
    targets: list[Target]
    notes: list[str]


def _row_at(rows: list[Baselines], concurrency: int) -> Baselines | None:
    exact = [r for r in rows if r["concurrency"] == concurrency]
    if exact:
        return exact[0]
    # Without the asked-for concurrency, the highest measured one stands in.
    return max(rows, key=lambda r: r["concurrency"]) if rows else None


def targets(rows: list[Baselines], listing: ListUsers, interference: Interference) -> list[Target]:
    found = []
    row = _row_at(rows, 64)
    if row is not None:
        found.append(
            target(
                f"GetUser / empty RPC calls/s at {row['concurrency']} callers",
                row["getuser_per_empty"],
                ">=",
                GETUSER_PER_EMPTY_MIN,
            )
        )
    found += [
        target(
            f"ListUsers page {listing['deep_page']:,} p50 / page 1 p50",
            listing["deep_per_page1_p50"],
            "<=",
            DEEP_PER_PAGE1_MAX,
        ),
        target(
            f"GetUser p99 with {interference['login_callers']} logins / idle p99 "
            f"({interference['callers']} callers)",
            interference["p99_loaded_per_idle"],
            "<=",
            INTERFERENCE_P99_MAX,
        ),
    ]
    return found


def _phases(
    rows: list[Baselines], interference: Interference, tokens: Tokens, create: Phase
) -> Iterator[tuple[str, Phase]]:
    for row in rows:
        yield f"empty c={row['concurrency']}", row["empty"]
        yield f"getuser c={row['concurrency']}", row["getuser"]
        yield f"asyncpg c={row['concurrency']}", row["asyncpg"]
    yield "interference idle", interference["idle"]
    yield "interference loaded", interference["loaded"]
    yield "interference logins", interference["logins"]
    yield "CreateUser", create
    yield "IssueToken login", tokens["login"]
    yield "IssueToken refresh", tokens["refresh"]


def notes(
    rows: list[Baselines],
    listing: ListUsers,
    interference: Interference,
    tokens: Tokens,
    create: Phase,
) -> list[str]:
    """What makes a figure of this run doubtful, or explains it."""
    found = []
    noisy, churn = [], []
    for name, phase in _phases(rows, interference, tokens, create):
        if phase["errors"]:
            found.append(f"{name}: errors {phase['errors']}")
        cpu = phase["cpu"]
        other = cpu.get("other_cores")
        if other is not None and other > _report.NOISY_OTHER_CORES:
            noisy.append(f"{name} {other:.2f}")
        opened = cpu.get("postgres_sessions_opened")
        if opened and not name.startswith(("empty", "asyncpg")):
            churn.append(f"{name} {opened}")
        if name.startswith("empty") and cpu.get("client_cores", 0) > CLIENT_SATURATED_CORES:
            found.append(
                f"{name}: the client used {cpu.get('client_cores', 0):.2f} cores; the empty "
                "RPC may be client-bound, which flatters the GetUser / empty ratio"
            )
    found += _report.noisy_note(noisy)
    if churn:
        found.append(
            "the service opened new database connections during the window (its pool is "
            f"smaller than the callers, so overflow connections come and go): {', '.join(churn)}"
        )
    row = _row_at(rows, 64)
    if row is not None:
        by_rate, by_cpu = row["getuser_per_empty"], row["getuser_per_empty_by_cpu"]
        if by_rate and by_cpu and _report.disagree(by_rate, by_cpu):
            found.append(
                f"GetUser / empty RPC at {row['concurrency']} callers is {by_rate:.2f} by calls/s "
                f"but {by_cpu:.2f} by server CPU per call: load from other processes, or a "
                "client-bound baseline, moved one of the two phases; rerun on a quiet machine"
            )
    if listing["errors"]:
        found.append(f"ListUsers: errors {listing['errors']}")
    return found


def _phase_line(label: str, phase: Phase) -> str:
    cpu = phase["cpu"]
    figures = phase["figures"]
    errors = sum(phase["errors"].values())
    return (
        f"  {label:<22}{fmt(figures['calls_per_s'] if figures else None, 0):>9}"
        f"{fmt(figures['p50_ms'] if figures else None):>9}"
        f"{fmt(figures['p99_ms'] if figures else None):>9}{errors:>7}"
        f"{fmt(us_per_call(phase), 0):>10}{fmt(cpu.get('server_cores')):>8}"
        f"{fmt(cpu.get('postgres_cores')):>8}{fmt(cpu.get('client_cores')):>8}"
        f"{fmt(cpu.get('other_cores')):>8}"
    )


def _brief(phase: Phase) -> str:
    figures = phase["figures"]
    if figures is None:
        return "-"
    return (
        f"{fmt(figures['calls_per_s'], 1)} calls/s, p50 {fmt(figures['p50_ms'], 1)} ms, "
        f"p99 {fmt(figures['p99_ms'], 1)} ms"
    )


_HEADER = (
    f"  {'':<22}{'calls/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>7}"
    f"{'µs/call':>10}{'server':>8}{'pg':>8}{'client':>8}{'other':>8}"
)


def render(results: Results) -> str:
    machine = results["machine"]
    config = results["config"]
    out = ["", "Tandem users service benchmark", "", _report.machine_line(machine, VERSIONS)]
    out.append(
        f"run       {config.users:,} users; phases {config.duration:g} s after "
        f"{config.warmup:g} s warm-up; {config.rounds} round(s) (median: bench/_report.py); "
        f"{'pinned: servers cpu 0, clients cpu 1' if config.pin else 'unpinned'}; "
        f"load average at start {_report.load_average(machine)}; took {results['elapsed_s']:.0f} s"
    )
    out.append(_report.seed_line(results["seed"]))
    out += _render_getuser(results["getuser"])
    out += _render_listing(results["list_users"])
    tokens = results["tokens"]
    out += [
        "",
        f"IssueToken at {tokens['callers']} callers",
        f"  {'password grant':<20} {_brief(tokens['login'])}",
        f"  {'refresh_token grant':<20} {_brief(tokens['refresh'])}",
    ]
    out += _render_create(results["argon2"], results["create_user"])
    out += _render_interference(results["interference"])
    profile = results["profile"]
    if profile:
        out += _render_profile(profile)
    out += _report.render_verdicts(results["targets"], results["notes"])
    return "\n".join(out)


def _render_getuser(rows: list[Baselines]) -> list[str]:
    out = [
        "",
        "GetUser against an empty RPC and a bare asyncpg loop (closed loop, random seeded ids)",
        "  µs/call: CPU of the server process per call (for asyncpg: of the loop process);",
        "  server/pg/client/other: cores used in the window (pg: the backends of the run's",
        "  database, polled every 0.25 s; other: the rest of the machine, i.e. noise)",
        _HEADER,
    ]
    for row in rows:
        c = row["concurrency"]
        out.append(_phase_line(f"c={c:<3} empty RPC", row["empty"]))
        out.append(_phase_line(f"c={c:<3} GetUser", row["getuser"]))
        out.append(_phase_line(f"c={c:<3} bare asyncpg", row["asyncpg"]))
        out.append(
            f"  c={c:<3} GetUser / empty RPC {fmt(row['getuser_per_empty'])} "
            f"(by CPU per call {fmt(row['getuser_per_empty_by_cpu'])}), "
            f"GetUser / bare asyncpg {fmt(row['getuser_per_asyncpg'])} "
            f"(by CPU per call {fmt(row['getuser_per_asyncpg_by_cpu'])})"
        )
    return out


def _render_listing(listing: ListUsers) -> list[str]:
    out = [
        "",
        f"ListUsers, page_size {listing['page_size']}, 1 caller, page 1 and page "
        f"{listing['deep_page']:,} alternating ({listing['rows_before_deep_page']:,} rows in;"
        f" token from {listing['walk_calls']} API calls in {listing['walk_s']:.1f} s)",
    ]
    for stats, label in (
        (listing["page1"], "page 1"),
        (listing["deep"], f"page {listing['deep_page']:,}"),
    ):
        out.append(
            f"  {label:<14} p50 {fmt(stats['p50_ms'] if stats else None)} ms  p99 "
            f"{fmt(stats['p99_ms'] if stats else None)} ms  ({stats['calls'] if stats else 0} "
            "calls)"
        )
    out.append(
        f"  deep / page 1  p50 x{fmt(listing['deep_per_page1_p50'])}, "
        f"p99 x{fmt(listing['deep_per_page1_p99'])}"
    )
    return out


def _render_create(argon2: Argon2Cost, create: Phase) -> list[str]:
    figures = create["figures"]
    share = ""
    if figures is not None:
        share = f" = {figures['calls_per_s'] / argon2['ceiling_per_s']:.0%} of that ceiling"
    return [
        "",
        "CreateUser and argon2id",
        f"  argon2id m={argon2['memory_kib']} KiB t={argon2['time_cost']} "
        f"p={argon2['parallelism']} (the service's defaults): hash "
        f"{argon2['hash_ms_median']:.1f} ms median (min {argon2['hash_ms_min']:.1f}), "
        f"verify {argon2['verify_ms_median']:.1f} ms; {argon2['workers']} hash worker(s) "
        f"-> at most {argon2['ceiling_per_s']:.1f} hashes/s",
        f"  CreateUser at {create['concurrency']} callers: {_brief(create)}{share}",
    ]


def _render_interference(interference: Interference) -> list[str]:
    return [
        "",
        f"Login interference: GetUser at {interference['callers']} callers, idle and "
        f"while {interference['login_callers']} AuthenticateUser callers run",
        _HEADER,
        _phase_line("GetUser idle", interference["idle"]),
        _phase_line("GetUser with logins", interference["loaded"]),
        _phase_line("AuthenticateUser", interference["logins"]),
        f"  p99 loaded / idle x{fmt(interference['p99_loaded_per_idle'])}, "
        f"p50 x{fmt(interference['p50_loaded_per_idle'])}",
        "  (the server's CPU in the last two lines is that of both loads together)",
    ]


def _render_profile(profile: Profile) -> list[str]:
    out = [
        "",
        f"Where the users service spends its CPU (py-spy, GetUser at "
        f"{profile['concurrency']} callers, {profile['duration_s']:g} s at "
        f"{profile['rate_hz']} Hz; {profile['samples']} non-idle samples, "
        f"{profile['busy_threads']:.2f} threads busy in Python on average)",
        "  own time by package:   "
        + ", ".join(f"{e['name']} {e['share']:.0%}" for e in profile["self_by_package"][:10]),
        "  own time by function:",
    ]
    out += [f"    {e['share']:6.1%}  {e['name']}" for e in profile["self_by_function"][:15]]
    out.append("  including callees, by function:")
    out += [f"    {e['share']:6.1%}  {e['name']}" for e in profile["inclusive_by_function"][:25]]
    return out
