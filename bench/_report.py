"""The users benchmark's targets, its warnings about the run, and its printed report."""

from __future__ import annotations

from typing import Any

# The targets: (key, what, how the figure is read, limit).
GETUSER_PER_EMPTY_MIN = 0.30
DEEP_PER_PAGE1_MAX = 1.5
INTERFERENCE_P99_MAX = 5.0
# Above this, another process took enough CPU to move the figures (2 cores here).
NOISY_OTHER_CORES = 0.25
CLIENT_SATURATED_CORES = 0.9
RATIO_DISAGREEMENT = 0.15


def timings(values: dict[str, float]) -> str:
    return ", ".join(f"{k.removesuffix('_s')} {v:.1f} s" for k, v in values.items())


def _fmt(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _row_at(results: dict[str, Any], concurrency: int) -> dict[str, Any] | None:
    rows = results.get("getuser") or []
    exact = [r for r in rows if r["concurrency"] == concurrency]
    if exact:
        return dict(exact[0])
    # Without the asked-for concurrency, the highest measured one stands in.
    return dict(max(rows, key=lambda r: r["concurrency"])) if rows else None


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    row = _row_at(results, 64)
    if row is not None:
        found.append(
            _target(
                f"GetUser / empty RPC calls/s at {row['concurrency']} callers",
                row["getuser_per_empty"],
                ">=",
                GETUSER_PER_EMPTY_MIN,
            )
        )
    listing = results.get("list_users")
    if listing:
        found.append(
            _target(
                f"ListUsers page {listing['deep_page']:,} p50 / page 1 p50",
                listing["deep_per_page1_p50"],
                "<=",
                DEEP_PER_PAGE1_MAX,
            )
        )
    interference = results.get("interference")
    if interference:
        found.append(
            _target(
                f"GetUser p99 with {interference['login_callers']} logins / idle p99 "
                f"({interference['callers']} callers)",
                interference["p99_loaded_per_idle"],
                "<=",
                INTERFERENCE_P99_MAX,
            )
        )
    return found


def _target(what: str, value: float | None, op: str, limit: float) -> dict[str, Any]:
    passed = value is not None and (value >= limit if op == ">=" else value <= limit)
    return {"what": what, "value": value, "op": op, "limit": limit, "pass": passed}


def _phases(results: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    found = []
    for row in results.get("getuser") or []:
        for name in ("empty", "getuser", "asyncpg"):
            found.append((f"{name} c={row['concurrency']}", row[name]))
    interference = results.get("interference") or {}
    for name in ("idle", "loaded", "logins"):
        if name in interference:
            found.append((f"interference {name}", interference[name]))
    if results.get("create_user"):
        found.append(("CreateUser", results["create_user"]))
    for name in ("login", "refresh"):
        if (results.get("tokens") or {}).get(name):
            found.append((f"IssueToken {name}", results["tokens"][name]))
    return found


def notes(results: dict[str, Any]) -> list[str]:
    """What makes a figure of this run doubtful, or explains it."""
    found = []
    noisy, churn = [], []
    for name, phase in _phases(results):
        errors = phase.get("errors") or {}
        if errors:
            found.append(f"{name}: errors {errors}")
        cpu = phase.get("cpu") or {}
        other = cpu.get("other_cores")
        if other is not None and other > NOISY_OTHER_CORES:
            noisy.append(f"{name} {other:.2f}")
        opened = cpu.get("postgres_sessions_opened")
        if opened and not name.startswith(("empty", "asyncpg")):
            churn.append(f"{name} {opened}")
        if name.startswith("empty") and cpu.get("client_cores", 0) > CLIENT_SATURATED_CORES:
            found.append(
                f"{name}: the client used {cpu['client_cores']:.2f} cores; the empty RPC may "
                "be client-bound, which flatters the GetUser / empty ratio"
            )
    if noisy:
        found.append(
            f"noisy machine: other processes used more than {NOISY_OTHER_CORES} cores in "
            f"{len(noisy)} phases (cores): {', '.join(noisy)}"
        )
    if churn:
        found.append(
            "the service opened new database connections during the window (its pool is "
            f"smaller than the callers, so overflow connections come and go): {', '.join(churn)}"
        )
    row = _row_at(results, 64)
    if row is not None:
        by_rate, by_cpu = row.get("getuser_per_empty"), row.get("getuser_per_empty_by_cpu")
        if by_rate and by_cpu and abs(by_rate / by_cpu - 1) > RATIO_DISAGREEMENT:
            found.append(
                f"GetUser / empty RPC at {row['concurrency']} callers is {by_rate:.2f} by calls/s "
                f"but {by_cpu:.2f} by server CPU per call: load from other processes, or a "
                "client-bound baseline, moved one of the two phases; rerun on a quiet machine"
            )
    listing = results.get("list_users") or {}
    if listing.get("errors"):
        found.append(f"ListUsers: errors {listing['errors']}")
    return found


def _phase_line(label: str, phase: dict[str, Any]) -> str:
    cpu = phase.get("cpu") or {}
    per_call = cpu.get("server_us_per_call") or cpu.get("process_us_per_call")
    errors = sum((phase.get("errors") or {}).values())
    return (
        f"  {label:<22}{_fmt(phase.get('calls_per_s'), 0):>9}"
        f"{_fmt(phase.get('p50_ms')):>9}{_fmt(phase.get('p99_ms')):>9}{errors:>7}"
        f"{_fmt(per_call, 0):>10}{_fmt(cpu.get('server_cores')):>8}"
        f"{_fmt(cpu.get('postgres_cores')):>8}{_fmt(cpu.get('client_cores')):>8}"
        f"{_fmt(cpu.get('other_cores')):>8}"
    )


_HEADER = (
    f"  {'':<22}{'calls/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>7}"
    f"{'µs/call':>10}{'server':>8}{'pg':>8}{'client':>8}{'other':>8}"
)


def render(results: dict[str, Any]) -> str:
    machine = results["machine"]
    config = results["config"]
    seed = results.get("seed", {})
    out = ["", "Tandem users service benchmark", ""]
    out.append(
        f"machine   {machine['cores']} cores ({machine['cpu_model']}), Linux "
        f"{machine['kernel']}, Python {machine['python']}, grpcio {machine['grpcio']}, "
        f"SQLAlchemy {machine['sqlalchemy']}, asyncpg {machine['asyncpg']}, uvloop "
        f"{machine['uvloop']}, protobuf {machine['protobuf']}, PostgreSQL "
        f"{machine.get('postgresql', '?')}"
    )
    load = ", ".join(f"{v:.2f}" for v in machine["load_avg_at_start"])
    out.append(
        f"run       {config['users']:,} users; phases {config['duration']:g} s after "
        f"{config['warmup']:g} s warm-up; {config['rounds']} round(s); "
        f"{'pinned: servers cpu 0, clients cpu 1' if config['pin'] else 'unpinned'}; "
        f"load average at start {load}; took {results.get('elapsed_s', 0):.0f} s"
    )
    if seed:
        times = {k: v for k, v in seed.items() if k != "users"}
        out.append(f"seed      {seed['users']:,} rows: {timings(times)}")

    out += [
        "",
        "GetUser against an empty RPC and a bare asyncpg loop (closed loop, random seeded ids)",
        "  µs/call: CPU of the server process per call (for asyncpg: of the loop process);",
        "  server/pg/client/other: cores used in the window (pg: the backends of the run's",
        "  database, polled every 0.25 s; other: the rest of the machine, i.e. noise)",
        _HEADER,
    ]
    for row in results.get("getuser") or []:
        c = row["concurrency"]
        out.append(_phase_line(f"c={c:<3} empty RPC", row["empty"]))
        out.append(_phase_line(f"c={c:<3} GetUser", row["getuser"]))
        out.append(_phase_line(f"c={c:<3} bare asyncpg", row["asyncpg"]))
        out.append(
            f"  c={c:<3} GetUser / empty RPC {_fmt(row['getuser_per_empty'])} "
            f"(by CPU per call {_fmt(row.get('getuser_per_empty_by_cpu'))}), "
            f"GetUser / bare asyncpg {_fmt(row['getuser_per_asyncpg'])} "
            f"(by CPU per call {_fmt(row.get('getuser_per_asyncpg_by_cpu'))})"
        )

    listing = results.get("list_users")
    if listing:
        out += [
            "",
            f"ListUsers, page_size {listing['page_size']}, 1 caller, page 1 and page "
            f"{listing['deep_page']:,} alternating ({listing['rows_before_deep_page']:,} rows in;"
            f" token from {listing['walk_calls']} API calls in {listing['walk_s']:.1f} s)",
        ]
        for name, label in (("page1", "page 1"), ("deep", f"page {listing['deep_page']:,}")):
            stats = listing.get(name) or {}
            out.append(
                f"  {label:<14} p50 {_fmt(stats.get('p50_ms'))} ms  p99 "
                f"{_fmt(stats.get('p99_ms'))} ms  ({stats.get('calls', 0)} calls)"
            )
        out.append(
            f"  deep / page 1  p50 x{_fmt(listing['deep_per_page1_p50'])}, "
            f"p99 x{_fmt(listing['deep_per_page1_p99'])}"
        )

    tokens = results.get("tokens")
    if tokens:
        out += ["", f"IssueToken at {tokens['callers']} callers"]
        for name, what in (("login", "password grant"), ("refresh", "refresh_token grant")):
            phase = tokens[name]
            out.append(
                f"  {what:<20} {_fmt(phase.get('calls_per_s'), 1)} calls/s, p50 "
                f"{_fmt(phase.get('p50_ms'), 1)} ms, p99 {_fmt(phase.get('p99_ms'), 1)} ms"
            )

    argon2 = results.get("argon2")
    create = results.get("create_user")
    if argon2 or create:
        out += ["", "CreateUser and argon2id"]
    if argon2:
        out.append(
            f"  argon2id m={argon2['memory_kib']} KiB t={argon2['time_cost']} "
            f"p={argon2['parallelism']} (the service's defaults): hash "
            f"{argon2['hash_ms_median']:.1f} ms median (min {argon2['hash_ms_min']:.1f}), "
            f"verify {argon2['verify_ms_median']:.1f} ms; {argon2['workers']} hash worker(s) "
            f"-> at most {argon2['ceiling_per_s']:.1f} hashes/s"
        )
    if create:
        share = ""
        if argon2 and create.get("calls_per_s"):
            share = f" = {create['calls_per_s'] / argon2['ceiling_per_s']:.0%} of that ceiling"
        out.append(
            f"  CreateUser at {create['concurrency']} callers: "
            f"{_fmt(create.get('calls_per_s'), 1)} calls/s{share}, p50 "
            f"{_fmt(create.get('p50_ms'), 1)} ms, p99 {_fmt(create.get('p99_ms'), 1)} ms"
        )

    interference = results.get("interference")
    if interference:
        out += [
            "",
            f"Login interference: GetUser at {interference['callers']} callers, idle and "
            f"while {interference['login_callers']} AuthenticateUser callers run",
            _HEADER,
            _phase_line("GetUser idle", interference["idle"]),
            _phase_line("GetUser with logins", interference["loaded"]),
            _phase_line("AuthenticateUser", interference["logins"]),
            f"  p99 loaded / idle x{_fmt(interference['p99_loaded_per_idle'])}, "
            f"p50 x{_fmt(interference['p50_loaded_per_idle'])}",
            "  (the server's CPU in the last two lines is that of both loads together)",
        ]

    profile = results.get("profile")
    if profile:
        out += [
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
        out += [
            f"    {e['share']:6.1%}  {e['name']}" for e in profile["inclusive_by_function"][:25]
        ]

    out += ["", "Targets"]
    for target in results.get("targets") or []:
        verdict = "PASS" if target["pass"] else "FAIL"
        out.append(
            f"  {verdict}  {target['what']}: {_fmt(target['value'])} "
            f"(target {target['op']} {target['limit']:g})"
        )
    if results.get("notes"):
        out += ["", "Notes"]
        out += [f"  - {note}" for note in results["notes"]]
    out.append("")
    return "\n".join(out)
