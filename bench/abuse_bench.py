"""Benchmark of the gateway's edge under abuse, run on demand (never in the tests).

    .venv/bin/python bench/abuse_bench.py [--quick] [--idle S] [--flood S] [--hold S]
        [--concurrency N] [--connections N] [--active N] [--json PATH]
        [--transport mtls|tls|plaintext] [--gateway-env GATEWAY_X=V]

One process tree: a PostgreSQL database of its own (created, migrated, dropped at the
end, also on Ctrl-C), the users service and the gateway as real processes (bench/_gwstack:
mTLS between them by default, the gateway's service account), the attacker as a separate
process (bench/_abuseload.py), and this process as the legitimate client and the probes.
The limits are the in-process ones (no Redis), at their defaults.

1. **Login flood.** A legitimate user (their own account) logs in once a second with
   the right password and reads `GET /v1/users/{id}` back to back, first for `--idle`
   seconds alone, then for `--flood` seconds while the attacker keeps `--concurrency`
   (200) wrong-password logins in flight against a few other accounts. The attacker
   sends from 127.0.0.1; the user's socket is bound to 127.0.0.2, another loopback
   address, so the gateway sees a different peer, exactly as it would for two hosts with
   the default settings. (The other way, GATEWAY_TRUSTED_PROXIES=127.0.0.1/32 and an
   X-Forwarded-For per client, would measure a configuration the defaults do not have
   and a header the client writes itself.) Reported: the user's login p50/p99 and
   failures, GetUser's p99 in the flood against its idle p99, the attacker's statuses,
   and whether its 429s carry Retry-After.
2. **Connection flood.** The attacker opens `--connections` (4,096) connections, every
   n-th of `--active` of them sending `GET /v1/users/me` back to back, the rest idle
   (opened again whenever the gateway closes them), and holds them `--hold` seconds.
   Throughout (before, while opening, held, after), this process probes on fresh
   connections from 127.0.0.3 (another host than the attacker, as a kubelet or another
   client is): `/healthz` every 50 ms on the gateway's health port (GATEWAY_HEALTH_ADDR,
   where a kubelet probes; the target) and on its API port (reported), and
   `GET /v1/users/me` every 100 ms, which past GATEWAY_MAX_CONNECTIONS must be refused
   at once (503). Reported: their latencies, the attacker's statuses, and the gateway's
   RSS (VmRSS) before, during (peak) and after.

Each phase runs once: the targets are those of this one run.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypedDict

import _gwstack
import _pg
import _procs
import _report
import httpx
from _abuseload import percentiles, read_response
from _config import PASSWORD, add_common_options, add_env_option, env_pairs, log
from _facts import PACKAGES, Machine, machine_facts
from _report import Target, fmt, target

from tests.support.harness import Child, child_env
from tests.support.postgres import admin_url

LEGIT_ADDRESS = "127.0.0.2"
# The connection flood's probes: a kubelet, a client refused past the cap; another host
# than the attacker (127.0.0.1), as they would be.
PROBE_ADDRESS = "127.0.0.3"
LEGIT_EMAIL = "legit.user@example.com"
HOLDER_EMAIL = "connection.holder@example.com"
VICTIMS = tuple(f"victim{n}@example.com" for n in range(3))
WRONG_PASSWORD = "not the password"
LOGIN_EVERY_S = 1.0
LATE_S = 5.0
HEALTH_EVERY_S = 0.05
REFUSED_EVERY_S = 0.1
PROBE_TIMEOUT_S = 5.0
SETTLE_S = 3.0
SLOW_MS = 100.0
# Connections waiting to be accepted, past which the report says so.
ACCEPT_QUEUE_NOTE = 50
LOADER = str(Path(__file__).resolve().parent / "_abuseload.py")


@dataclass(frozen=True)
class AbuseConfig:
    idle: float
    flood: float
    concurrency: int
    hold: float
    connections: int
    active: int
    json_path: str | None
    admin_url: str | None
    transport: str
    gateway_env: dict[str, str] = field(default_factory=dict)
    quick: bool = False


class Latencies(TypedDict):
    count: int
    p50_ms: float | None
    p99_ms: float | None
    max_ms: float | None


def summary(samples_ms: Sequence[float]) -> Latencies:
    found = percentiles([int(v * 1e6) for v in samples_ms])
    return {
        "count": int(found["count"] or 0),
        "p50_ms": found["p50_ms"],
        "p99_ms": found["p99_ms"],
        "max_ms": found["max_ms"],
    }


# --- the stack ---------------------------------------------------------------------------


async def _sign_up(base_url: str, email: str) -> str:
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        created = await client.post(
            "/v1/users", json={"email": email, "name": "Abuse Bench", "password": PASSWORD}
        )
        if created.status_code != 201:
            raise RuntimeError(f"sign-up failed: {created.status_code} {created.text}")
        return str(created.json()["id"])


async def _log_in(client: httpx.AsyncClient, email: str) -> httpx.Response:
    return await client.post(
        "/v1/auth/token",
        data={"grant_type": "password", "username": email, "password": PASSWORD},
    )


# --- 1. the login flood ------------------------------------------------------------------


class Legit(TypedDict):
    seconds: float
    logins: Latencies
    login_statuses: dict[str, int]
    reads: Latencies
    read_statuses: dict[str, int]
    # Each login: seconds from the start, milliseconds, outcome.
    login_samples: list[tuple[float, float, str]]
    # GetUser from LATE_S on (in the flood: once the guesses no longer reach argon2).
    reads_late: Latencies


async def _legit_user(client: httpx.AsyncClient, user_id: str, seconds: float) -> Legit:
    """The user logs in every LOGIN_EVERY_S and reads their account back to back."""
    token: list[str] = []
    first = await _log_in(client, LEGIT_EMAIL)
    first.raise_for_status()
    token.append(str(first.json()["access_token"]))
    login_ms: list[float] = []
    read_ms: list[float] = []
    login_statuses: Counter[str] = Counter()
    read_statuses: Counter[str] = Counter()
    login_samples: list[tuple[float, float, str]] = []
    late_ms: list[float] = []
    started = time.monotonic()
    until = started + seconds

    async def logins() -> None:
        while time.monotonic() < until:
            began = time.perf_counter()
            try:
                reply = await _log_in(client, LEGIT_EMAIL)
            except httpx.HTTPError as exc:
                login_statuses[type(exc).__name__] += 1
                login_ms.append((time.perf_counter() - began) * 1000)
                continue
            login_ms.append((time.perf_counter() - began) * 1000)
            login_statuses[_outcome(reply)] += 1
            login_samples.append((time.monotonic() - started, login_ms[-1], _outcome(reply)))
            if reply.status_code == 200:
                token[0] = str(reply.json()["access_token"])
            await asyncio.sleep(max(0.0, LOGIN_EVERY_S - (time.perf_counter() - began)))

    async def reads() -> None:
        while time.monotonic() < until:
            began = time.perf_counter()
            try:
                reply = await client.get(
                    f"/v1/users/{user_id}", headers={"Authorization": f"Bearer {token[0]}"}
                )
            except httpx.HTTPError as exc:
                read_statuses[type(exc).__name__] += 1
                await asyncio.sleep(0.01)
                continue
            read_ms.append((time.perf_counter() - began) * 1000)
            if time.monotonic() - started >= LATE_S:
                late_ms.append(read_ms[-1])
            read_statuses[_outcome(reply)] += 1

    await asyncio.gather(logins(), reads())
    return {
        "seconds": time.monotonic() - started,
        "logins": summary(login_ms),
        "login_statuses": dict(login_statuses),
        "reads": summary(read_ms),
        "read_statuses": dict(read_statuses),
        "login_samples": login_samples,
        "reads_late": summary(late_ms),
    }


def _outcome(reply: httpx.Response) -> str:
    """The status, and a problem's reason (`429 PASSWORD_HASH_QUEUE_FULL`)."""
    if reply.status_code < 400:
        return str(reply.status_code)
    with contextlib.suppress(ValueError, AttributeError):
        return f"{reply.status_code} {reply.json().get('reason', '')}".strip()
    return str(reply.status_code)


class LoginFlood(TypedDict):
    idle: Legit
    flood: Legit
    attacker: dict[str, Any]
    cpu_cores: dict[str, float]


async def _json_child(child: Child, within: float) -> dict[str, Any]:
    code = await child.wait(within)
    for line in reversed(child.lines):
        if line.startswith("{"):
            result: dict[str, Any] = json.loads(line)
            return result
    raise RuntimeError(f"the attacker exited ({code}) without its results:\n{child.tail()}")


async def _login_flood(config: AbuseConfig, stack: _gwstack.Stack, user_id: str) -> LoginFlood:
    transport = httpx.AsyncHTTPTransport(local_address=LEGIT_ADDRESS)
    async with httpx.AsyncClient(
        base_url=stack.gateway_url, transport=transport, timeout=30
    ) as client:
        log(f"login flood: the legitimate user alone, {config.idle:g} s")
        idle = await _legit_user(client, user_id, config.idle)
        log(
            f"  login p99 {fmt(idle['logins']['p99_ms'])} ms, GetUser p99 "
            f"{fmt(idle['reads']['p99_ms'])} ms"
        )
        attacker = Child(
            [
                sys.executable,
                LOADER,
                "logins",
                "--port",
                str(stack.gateway_port),
                "--concurrency",
                str(config.concurrency),
                "--duration",
                f"{config.flood:g}",
                "--password",
                WRONG_PASSWORD,
                *VICTIMS,
            ],
            child_env(),
            str(_procs.ROOT),
            name="attacker (logins)",
        )
        log(
            f"login flood: {config.concurrency} wrong-password logins in flight, {config.flood:g} s"
        )
        pids = _pids(stack)
        await attacker.start()
        try:
            await attacker.wait_for(lambda line: line == "ready" or None, 30, what="ready")
            before = _cpu(pids)
            flood = await _legit_user(client, user_id, config.flood)
            cores = _cores(before, _cpu(pids), flood["seconds"])
            result = await _json_child(attacker, config.flood + 60)
            cores["attacker"] = float(result["cpu_s"]) / float(result["seconds"])
        finally:
            await attacker.stop()
        stack.check_alive()
    log(
        f"  login p99 {fmt(flood['logins']['p99_ms'])} ms, GetUser p99 "
        f"{fmt(flood['reads']['p99_ms'])} ms; attacker {result['statuses']}"
    )
    return {"idle": idle, "flood": flood, "attacker": result, "cpu_cores": cores}


# --- 2. the connection flood ----------------------------------------------------------------


class Probe(TypedDict):
    at: float  # seconds since the probes started
    ms: float
    status: str


async def _probe_once(port: int, request: bytes) -> tuple[float, str]:
    """A fresh connection, one request: its latency (connect included) and outcome."""
    began = time.perf_counter()
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(PROBE_TIMEOUT_S):
            reader, writer = await asyncio.open_connection(
                "127.0.0.1", port, local_addr=(PROBE_ADDRESS, 0)
            )
            writer.write(request)
            response = await read_response(reader)
        outcome = f"{response.status} {response.reason}".strip()
    except TimeoutError:
        outcome = "timeout"
    except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
        outcome = type(exc).__name__
    finally:
        if writer is not None:
            writer.close()
    return (time.perf_counter() - began) * 1000, outcome


async def _probe_loop(
    port: int, request: bytes, every: float, origin: float, out: list[Probe], stop: asyncio.Event
) -> None:
    pending: set[asyncio.Task[None]] = set()

    async def one() -> None:
        at = time.monotonic() - origin
        ms, status = await _probe_once(port, request)
        out.append({"at": at, "ms": ms, "status": status})

    while not stop.is_set():
        # On a schedule, not one after another: a slow answer must not hide later ones.
        task = asyncio.create_task(one())
        pending.add(task)
        task.add_done_callback(pending.discard)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every)
    if pending:
        await asyncio.gather(*pending)


def _rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _open_fds(pid: int) -> int | None:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None


def listen_drops() -> dict[str, int]:
    """The kernel's count of connections a full accept queue dropped (whole machine)."""
    lines = Path("/proc/net/netstat").read_text().splitlines()
    for names, values in zip(lines[::2], lines[1::2], strict=False):
        if names.startswith("TcpExt:"):
            found = dict(zip(names.split()[1:], (int(v) for v in values.split()[1:]), strict=False))
            return {k: found.get(k, 0) for k in ("ListenOverflows", "ListenDrops")}
    return {}


def accept_queue(port: int) -> int | None:
    """Connections the kernel holds for the gateway's listening socket, not yet accepted
    (/proc/net/tcp lists listening sockets first; rx_queue is their accept queue)."""
    wanted = f"0100007F:{port:04X}"
    with open("/proc/net/tcp", encoding="ascii") as f:
        next(f)
        for line in f:
            fields = line.split()
            if fields[3] != "0A":
                return None
            if fields[1] == wanted:
                return int(fields[4].split(":")[1], 16)
    return None


Sample = tuple[float, float, int, int]  # seconds, RSS MiB, descriptors, accept queue


async def _rss_loop(
    pid: int, port: int, origin: float, out: list[Sample], stop: asyncio.Event
) -> None:
    """The gateway's RSS (MiB), open descriptors (its accepted connections) and accept
    queue, 4 times a second."""
    while not stop.is_set():
        rss, fds = _rss_mib(pid), _open_fds(pid)
        queue = await asyncio.to_thread(accept_queue, port)
        if rss is not None and fds is not None:
            out.append((time.monotonic() - origin, rss, fds, -1 if queue is None else queue))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.25)


class Window(TypedDict):
    health: Latencies  # on the health port (GATEWAY_HEALTH_ADDR), as a kubelet probes
    health_statuses: dict[str, int]
    main_health: Latencies  # /healthz on the main port, behind the flood
    main_health_statuses: dict[str, int]
    refused: Latencies  # the /v1/users/me probes not 200: 503s, timeouts
    probe_statuses: dict[str, int]


class ConnectionFlood(TypedDict):
    marks: dict[str, float]
    windows: dict[str, Window]
    rss_mib: dict[str, float | None]
    attacker: dict[str, Any]
    cpu_cores: dict[str, float]
    # Descriptors the gateway held (about one per accepted connection).
    gateway_fds: dict[str, int | None]
    # The most connections waiting in the kernel for the gateway to accept them.
    accept_queue_max: int | None
    samples: list[Sample]
    # SYNs / connections the kernel dropped for a full accept queue, on the whole machine.
    listen_drops: dict[str, int]
    # The /healthz probes slower than SLOW_MS or not 200, when they were sent.
    slow_health: list[Probe]


def _window(
    health: list[Probe], main: list[Probe], probes: list[Probe], start: float, end: float
) -> Window:
    h = [p for p in health if start <= p["at"] < end]
    m = [p for p in main if start <= p["at"] < end]
    r = [p for p in probes if start <= p["at"] < end]
    return {
        "health": summary([p["ms"] for p in h]),
        "health_statuses": dict(Counter(p["status"] for p in h)),
        "main_health": summary([p["ms"] for p in m]),
        "main_health_statuses": dict(Counter(p["status"] for p in m)),
        # Past the cap a fresh connection's request must be refused at once; one not
        # answered within PROBE_TIMEOUT_S counts with that time.
        "refused": summary([p["ms"] for p in r if not p["status"].startswith("2")]),
        "probe_statuses": dict(Counter(p["status"] for p in r)),
    }


async def _connection_flood(
    config: AbuseConfig, stack: _gwstack.Stack, token: str
) -> ConnectionFlood:
    assert stack.gateway is not None
    port = stack.gateway_port
    health_request = b"GET /healthz HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n"
    me_request = (
        b"GET /v1/users/me HTTP/1.1\r\nHost: probe\r\nAuthorization: Bearer %s\r\n"
        b"Connection: close\r\n\r\n" % token.encode()
    )
    health: list[Probe] = []
    main_health: list[Probe] = []
    probes: list[Probe] = []
    rss: list[Sample] = []
    stop = asyncio.Event()
    origin = time.monotonic()
    health_port = stack.health_port
    loops = [
        asyncio.create_task(
            _probe_loop(health_port, health_request, HEALTH_EVERY_S, origin, health, stop)
        ),
        asyncio.create_task(
            _probe_loop(port, health_request, HEALTH_EVERY_S, origin, main_health, stop)
        ),
        asyncio.create_task(_probe_loop(port, me_request, REFUSED_EVERY_S, origin, probes, stop)),
        asyncio.create_task(_rss_loop(stack.gateway.pid, port, origin, rss, stop)),
    ]
    marks: dict[str, float] = {}
    attacker = Child(
        [
            sys.executable,
            LOADER,
            "connections",
            "--port",
            str(port),
            "--connections",
            str(config.connections),
            "--active",
            str(config.active),
            "--duration",
            f"{config.hold:g}",
            "--token",
            token,
        ],
        child_env(),
        str(_procs.ROOT),
        name="attacker (connections)",
    )
    pids = _pids(stack)
    drops_before = listen_drops()
    try:
        log(f"connection flood: probes alone, {SETTLE_S:g} s")
        await asyncio.sleep(SETTLE_S)
        marks["opening"] = time.monotonic() - origin
        log(
            f"connection flood: opening {config.connections:,} connections "
            f"({config.active:,} active), then holding them {config.hold:g} s"
        )
        await attacker.start()
        ready = await attacker.wait_for(
            lambda line: line if line.startswith("ready") else None, 120, what="ready"
        )
        marks["held"] = time.monotonic() - origin
        log(f"  {ready}")
        before = _cpu(pids)
        result = await _json_child(attacker, config.hold + 120)
        marks["closed"] = time.monotonic() - origin
        cores = _cores(before, _cpu(pids), marks["closed"] - marks["held"])
        cores["attacker"] = float(result["cpu_s"]) / (marks["closed"] - marks["opening"])
        log(f"connection flood: probes alone again, {2 * SETTLE_S:g} s")
        await asyncio.sleep(2 * SETTLE_S)
        marks["end"] = time.monotonic() - origin
        drops_after = listen_drops()
    finally:
        stop.set()
        await asyncio.gather(*loops, return_exceptions=True)
        await attacker.stop()
    stack.check_alive()
    windows = {
        name: _window(health, main_health, probes, start, end)
        for name, start, end in (
            ("before", 0, marks["opening"]),
            ("opening", marks["opening"], marks["held"]),
            ("held", marks["held"], marks["closed"]),
            ("after", marks["closed"], marks["end"]),
            ("throughout", marks["opening"], marks["closed"]),
        )
    }

    def rss_in(start: float, end: float) -> list[float]:
        return [v for at, v, _, _ in rss if start <= at < end]

    fds_held = [n for at, _, n, _ in rss if marks["held"] <= at < marks["closed"]]
    queue = [q for at, _, _, q in rss if marks["opening"] <= at < marks["closed"]]

    during = rss_in(marks["opening"], marks["closed"])
    before_rss = rss_in(0, marks["opening"])
    after_rss = rss_in(marks["closed"], marks["end"])
    return {
        "marks": marks,
        "windows": windows,
        "rss_mib": {
            "before": before_rss[-1] if before_rss else None,
            "during_peak": max(during) if during else None,
            "during_end": during[-1] if during else None,
            "after": after_rss[-1] if after_rss else None,
        },
        "gateway_fds": {
            "before": next((n for at, _, n, _ in reversed(rss) if at < marks["opening"]), None),
            "held_min": min(fds_held) if fds_held else None,
            "held_max": max(fds_held) if fds_held else None,
        },
        "accept_queue_max": max(queue) if queue else None,
        "samples": rss,
        "listen_drops": {k: drops_after.get(k, 0) - v for k, v in drops_before.items()},
        "attacker": result,
        "cpu_cores": cores,
        "slow_health": [p for p in health if p["ms"] > SLOW_MS or p["status"] != "200"],
    }


# --- CPU -----------------------------------------------------------------------------------


def _pids(stack: _gwstack.Stack) -> dict[str, int]:
    assert stack.gateway is not None
    assert stack.users is not None
    return {"gateway": stack.gateway.pid, "users": stack.users.pid}


def _cpu(pids: dict[str, int]) -> dict[str, float]:
    found = {name: _procs.process_cpu_s(pid) for name, pid in pids.items()}
    found["machine"] = _procs.machine_cpu_s()[0]
    return found


def _cores(before: dict[str, float], after: dict[str, float], seconds: float) -> dict[str, float]:
    return {name: (after[name] - before[name]) / seconds for name in after if name in before}


# --- the run --------------------------------------------------------------------------------


class Results(TypedDict):
    machine: Machine
    config: AbuseConfig
    transport: str
    nofile: tuple[int, int]
    login_flood: LoginFlood
    connection_flood: ConnectionFlood
    targets: list[Target]
    notes: list[str]
    elapsed_s: float


def _raise_nofile(needed: int) -> tuple[int, int]:
    """RLIMIT_NOFILE up to the hard limit, inherited by every child (the gateway holds
    one descriptor per connection, the attacker one per connection too)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard == resource.RLIM_INFINITY else max(soft, hard)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        raise SystemExit(
            f"RLIMIT_NOFILE is {soft} (hard {hard}); the connection flood needs {needed}: "
            "raise the hard limit (ulimit -Hn) or pass a smaller --connections"
        )
    return soft, hard


def _targets(login: LoginFlood, conns: ConnectionFlood) -> list[Target]:
    idle, flood, attacker = login["idle"], login["flood"], login["attacker"]
    statuses: dict[str, int] = attacker["statuses"]
    too_many = sum(n for k, n in statuses.items() if k.startswith("429"))
    with_retry = sum(n for k, n in attacker["retry_after"].items() if k.startswith("429"))
    server_errors = sum(n for k, n in statuses.items() if k.startswith("5"))
    legit_failed = sum(n for k, n in flood["login_statuses"].items() if k != "200")
    reads_failed = sum(n for k, n in flood["read_statuses"].items() if k != "200")
    held = conns["windows"]["held"]
    throughout = conns["windows"]["throughout"]
    health_failed = sum(n for k, n in throughout["health_statuses"].items() if k != "200")
    c_statuses: dict[str, int] = conns["attacker"]["statuses"]
    c_idle: dict[str, Any] = conns["attacker"]["idle"]
    c_5xx = sum(n for k, n in c_statuses.items() if k.startswith("5") and not k.startswith("503"))
    refused_probe = sum(n for k, n in held["probe_statuses"].items() if k.startswith("503"))
    return [
        target("login flood: legitimate login p99 ms", flood["logins"]["p99_ms"], "<=", 1000),
        target("login flood: legitimate logins not 200", legit_failed, "<=", 0),
        target(
            "login flood: GetUser p99 in the flood / idle p99",
            _report.ratio(flood["reads"]["p99_ms"], idle["reads"]["p99_ms"]),
            "<=",
            2.0,
        ),
        target("login flood: GetUser calls not 200", reads_failed, "<=", 0),
        target("login flood: attacker's 429s", too_many, ">=", 1),
        target("login flood: attacker's 5xx (504 included)", server_errors, "<=", 0),
        target(
            "login flood: share of 429s with Retry-After",
            with_retry / too_many if too_many else None,
            ">=",
            1.0,
        ),
        target(
            "connection flood: health port /healthz p99 ms while opening and held",
            throughout["health"]["p99_ms"],
            "<=",
            100,
        ),
        target("connection flood: health port /healthz not 200", health_failed, "<=", 0),
        target(
            "connection flood: /me probes not 200 (refused, timed out) p99 ms while held",
            held["refused"]["p99_ms"],
            "<=",
            50,
        ),
        target(
            "connection flood: probes refused 503 while held", refused_probe, ">=", 1, check=True
        ),
        target(
            "connection flood: connections held",
            conns["attacker"]["held_at_ready"],
            ">=",
            conns["attacker"]["connections"],
            check=True,
        ),
        target("connection flood: attacker's 5xx other than 503", c_5xx, "<=", 0),
        target(
            "connection flood: attacker's failed connects",
            sum(n for k, n in c_idle["errors"].items() if k.startswith("open")),
            "<=",
            0,
            check=True,
        ),
    ]


def _notes(login: LoginFlood, conns: ConnectionFlood) -> list[str]:
    notes = []
    for name, cores in (("login", login["cpu_cores"]), ("connection", conns["cpu_cores"])):
        if cores.get("attacker", 0) > 0.9:
            notes.append(
                f"{name} flood: the attacker used {cores['attacker']:.2f} cores; with 2 "
                "cores it may have limited the load"
            )
    hash_full = login["flood"]["login_statuses"].get("429 PASSWORD_HASH_QUEUE_FULL", 0)
    if hash_full:
        notes.append(
            f"login flood: {hash_full} of the legitimate user's logins were refused "
            "PASSWORD_HASH_QUEUE_FULL: the flood's guesses hold the users service's one "
            "password-hash queue (USERS_PASSWORD_HASH_WORKERS + USERS_PASSWORD_HASH_QUEUE), "
            "shared by every address"
        )
    queued = conns["accept_queue_max"]
    if queued is not None and queued >= ACCEPT_QUEUE_NOTE:
        notes.append(
            f"connection flood: up to {queued} connections waited in the kernel's accept "
            "queue of the gateway's listening socket: fresh connections (the probes, the "
            "attacker's reconnects) waited there before the gateway saw them; the edge's "
            "limits apply only once a connection is accepted"
        )
    if conns["attacker"]["errors"] or conns["attacker"]["idle"]["errors"]:
        notes.append(
            f"connection flood: the attacker's socket errors: active "
            f"{conns['attacker']['errors']}, idle {conns['attacker']['idle']['errors']}"
        )
    return notes


async def run_bench(config: AbuseConfig) -> Results:
    _procs.cancel_on_signals(log)
    started = time.perf_counter()
    nofile = _raise_nofile(config.connections + 256)
    machine = machine_facts({**PACKAGES, "uvicorn": "uvicorn", "httptools": "httptools"})
    admin = admin_url(config.admin_url)
    machine["versions"]["PostgreSQL"] = await _pg.server_version(admin)
    with tempfile.TemporaryDirectory(prefix=f"abuse_bench_{os.getpid()}_") as workdir:
        async with _pg.own_database(admin) as database:
            await _pg.migrate(database, child_env())
            stack = _gwstack.Stack(
                _pg.sqlalchemy_url(database),
                workdir=Path(workdir),
                monolith_env={},
                gateway_env=config.gateway_env,
                transport=config.transport,
                monolith=False,  # nothing to compare with
            )
            try:
                log("starting the users service and the gateway")
                await stack.start()
                user_id = await _sign_up(stack.gateway_url, LEGIT_EMAIL)
                for email in (*VICTIMS, HOLDER_EMAIL):
                    await _sign_up(stack.gateway_url, email)
                async with httpx.AsyncClient(base_url=stack.gateway_url, timeout=30) as client:
                    holder = await _log_in(client, HOLDER_EMAIL)
                    holder.raise_for_status()
                login = await _login_flood(config, stack, user_id)
                conns = await _connection_flood(config, stack, str(holder.json()["access_token"]))
            except Exception:
                log(stack.tails())
                raise
            finally:
                with contextlib.suppress(Exception):
                    await stack.stop()
    targets = _targets(login, conns)
    return {
        "machine": machine,
        "config": config,
        "transport": config.transport,
        "nofile": nofile,
        "login_flood": login,
        "connection_flood": conns,
        "targets": targets,
        "notes": _notes(login, conns),
        "elapsed_s": time.perf_counter() - started,
    }


# --- the report -----------------------------------------------------------------------------


def _lat(value: Latencies) -> str:
    return f"p50 {fmt(value['p50_ms'])} ms, p99 {fmt(value['p99_ms'])} ms (n {value['count']:,})"


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v:,}" for k, v in sorted(counts.items())) or "-"


def render(results: Results) -> str:
    config = results["config"]
    login = results["login_flood"]
    conns = results["connection_flood"]
    attacker = login["attacker"]
    out = [
        "Tandem abuse benchmark: the gateway's edge under a login flood and a connection flood",
        _report.machine_line(results["machine"], ["uvicorn", "httptools", "grpcio", "PostgreSQL"]),
        f"load      {_report.load_average(results['machine'])} at start; gateway -> users "
        f"over {results['transport']}; RLIMIT_NOFILE {results['nofile'][0]}; in-process "
        f"limits at their defaults; {results['elapsed_s']:.0f} s in all",
        "",
        f"1. Login flood: {config.concurrency} wrong-password logins in flight from 127.0.0.1 "
        f"against {len(VICTIMS)} accounts for {config.flood:g} s; the user from {LEGIT_ADDRESS}",
    ]
    for name, legit in (("idle", login["idle"]), ("flood", login["flood"])):
        out += [
            f"  {name:<6} login   {_lat(legit['logins'])}; {_counts(legit['login_statuses'])}",
            f"  {name:<6} GetUser {_lat(legit['reads'])}; {_counts(legit['read_statuses'])}",
        ]
    late = login["flood"]["reads_late"]
    out.append(f"  flood  GetUser from {LATE_S:g} s on: {_lat(late)}")
    shown = ", ".join(
        f"{at:.1f} s: {ms:,.0f} ms {what}" for at, ms, what in login["flood"]["login_samples"]
    )
    out.append(f"  flood  the user's logins (when, how long): {shown}")
    rate = sum(attacker["statuses"].values()) / float(attacker["seconds"])
    out += [
        f"  attacker  {rate:,.0f} answers/s: {_counts(attacker['statuses'])}",
        f"            with Retry-After: {_counts(attacker['retry_after'])}; "
        f"socket errors: {_counts(attacker['errors'])}",
    ]
    for key, lat in sorted(attacker["latency"].items()):
        out.append(f"            {key}: p50 {fmt(lat['p50_ms'])} ms, p99 {fmt(lat['p99_ms'])} ms")
    out.append(f"  cores     {_counts_f(login['cpu_cores'])}")
    a = conns["attacker"]
    out += [
        "",
        f"2. Connection flood: {a['connections']:,} connections ({a['active']:,} sending "
        f"GET /v1/users/me back to back, the rest idle), opened in {a['ramp_s']:.1f} s, held "
        f"{a['seconds']:g} s; probes on fresh connections",
    ]
    for name, window in conns["windows"].items():
        out += [
            f"  {name:<10} /healthz {_lat(window['health'])}; {_counts(window['health_statuses'])}",
            f"  {'':<10} main port /healthz {_lat(window['main_health'])}; "
            f"{_counts(window['main_health_statuses'])}",
            f"  {'':<10} /me not 200 {_lat(window['refused'])}; "
            f"{_counts(window['probe_statuses'])}",
        ]
    out += [
        f"  attacker  active: {_counts(a['statuses'])}; reconnects {a['reconnects']:,}, "
        f"errors {_counts(a['errors'])}",
        f"            idle: reconnects {a['idle']['reconnects']:,}, errors "
        f"{_counts(a['idle']['errors'])}",
    ]
    for key, lat in sorted(a["latency"].items()):
        out.append(
            f"            {key}: p50 {fmt(lat['p50_ms'])} ms, p99 {fmt(lat['p99_ms'])} ms "
            "(the attacker's clock)"
        )
    slow = conns["slow_health"]
    if slow:
        opening = conns["marks"]["opening"]
        shown = ", ".join(f"{p['at'] - opening:+.1f} s {p['ms']:,.0f} ms" for p in slow[:12])
        more = f" and {len(slow) - 12} more" if len(slow) > 12 else ""
        out.append(
            f"  slow /healthz ({len(slow)} over {SLOW_MS:g} ms or not 200; when sent, from the "
            f"start of opening): {shown}{more}"
        )
    rss = conns["rss_mib"]
    out += [
        f"  gateway RSS  before {fmt(rss['before'], 1)} MiB, during (peak) "
        f"{fmt(rss['during_peak'], 1)} MiB, at the end of the hold {fmt(rss['during_end'], 1)} "
        f"MiB, after {fmt(rss['after'], 1)} MiB",
        f"  cores     {_counts_f(conns['cpu_cores'])}",
        f"  gateway descriptors  before {conns['gateway_fds']['before']}, held "
        f"{conns['gateway_fds']['held_min']}-{conns['gateway_fds']['held_max']}; its accept "
        f"queue at most {conns['accept_queue_max']}; the kernel's accept-queue drops "
        f"meanwhile: {_counts(conns['listen_drops'])}",
    ]
    out += _report.render_verdicts(results["targets"], results["notes"])
    return "\n".join(out)


def _counts_f(values: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f}" for k, v in values.items())


def parse_args(argv: Sequence[str] | None = None) -> AbuseConfig:
    parser = argparse.ArgumentParser(
        prog="abuse_bench.py",
        description="The gateway under a login flood and a connection flood (own database).",
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: 3 s phases")
    parser.add_argument("--idle", type=float, help="seconds of the user alone (default 10)")
    parser.add_argument("--flood", type=float, help="seconds of the login flood (default 15)")
    parser.add_argument("--concurrency", type=int, default=200, help="logins in flight")
    parser.add_argument("--hold", type=float, help="seconds the connections are held (default 20)")
    parser.add_argument("--connections", type=int, default=4096)
    parser.add_argument("--active", type=int, default=1024, help="connections sending requests")
    parser.add_argument(
        "--transport",
        choices=("plaintext", "tls", "mtls"),
        default="mtls",
        help="gateway to users service: mTLS as in production (default), TLS, or plaintext",
    )
    add_common_options(parser)
    add_env_option(
        parser,
        "--gateway-env",
        "GATEWAY_",
        server="the gateway",
        example="GATEWAY_MAX_IN_FLIGHT=256",
    )
    args = parser.parse_args(argv)
    idle = args.idle or (3.0 if args.quick else 10.0)
    flood = args.flood or (4.0 if args.quick else 15.0)
    hold = args.hold or (4.0 if args.quick else 20.0)
    if min(idle, flood, hold) <= 0 or args.concurrency < 1 or args.connections < 1:
        parser.error("--idle, --flood, --hold, --concurrency and --connections must be > 0")
    if not 0 <= args.active <= args.connections:
        parser.error("--active must be between 0 and --connections")
    return AbuseConfig(
        idle=idle,
        flood=flood,
        concurrency=args.concurrency,
        hold=hold,
        connections=args.connections,
        active=args.active,
        json_path=args.json_path,
        admin_url=args.admin_url,
        transport=args.transport,
        gateway_env=env_pairs(parser, "--gateway-env", args.gateway_env, "GATEWAY_"),
        quick=args.quick,
    )


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_args(argv)
    return _report.run_and_report(run_bench(config), render, config.json_path, log)


if __name__ == "__main__":
    raise SystemExit(main())
