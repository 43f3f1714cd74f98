"""The abuse benchmark's attacker: a separate process, so that its event loop is not the
one that times the legitimate client and the probes (bench/abuse_bench.py).

    python bench/_abuseload.py logins --port P --concurrency 200 --duration 15 \\
        --password WRONG EMAIL...
    python bench/_abuseload.py connections --port P --connections 4096 --active 1024 \\
        --duration 20 --token TOKEN

Raw HTTP/1.1 over asyncio streams (uvloop), one request at a time per connection: lean
enough that two cores are spent on the servers, not on parsing. `logins` keeps
`concurrency` wrong-password logins in flight (the password grant, round-robin over the
emails) for `duration` seconds. `connections` opens `connections` connections to the
gateway, `active` of them (spread evenly) sending `GET /v1/users/me` back to back, the
rest idle; a connection the gateway closes (over its cap, or idle past its header
timeout) is opened again at once, as an attacker would. It prints `ready` once every
connection is open, and at the end one JSON line: statuses, latencies, reconnects.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import re
import resource
import sys
import time
import urllib.parse
from collections import Counter, defaultdict
from collections.abc import Sequence
from typing import Any

HOST = "127.0.0.1"
_REASON = re.compile(rb'"reason"\s*:\s*"([A-Z_]+)"')
_TIMEOUT_S = 30.0


class Response:
    __slots__ = ("close", "reason", "retry_after", "status")

    def __init__(self, status: int, retry_after: bool, close: bool, reason: str) -> None:
        self.status = status
        self.retry_after = retry_after
        self.close = close
        self.reason = reason


async def read_response(reader: asyncio.StreamReader) -> Response:
    """One response's status, whether it carried Retry-After and Connection: close, and
    its problem reason (if any); the body read whole (Content-Length)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    length = 0
    retry_after = close = False
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"retry-after":
            retry_after = True
        elif name == b"connection" and value.strip().lower() == b"close":
            close = True
    body = await reader.readexactly(length) if length else b""
    found = _REASON.search(body) if status >= 400 else None
    return Response(status, retry_after, close, found.group(1).decode() if found else "")


def percentiles(samples_ns: list[int]) -> dict[str, float | int | None]:
    ordered = sorted(samples_ns)
    count = len(ordered)

    def pct(p: float) -> float | None:
        # Nearest rank, as bench/_loadgen.py.
        if not count:
            return None
        return ordered[max(0, math.ceil(p / 100 * count) - 1)] / 1e6

    return {
        "count": count,
        "p50_ms": pct(50),
        "p99_ms": pct(99),
        "max_ms": ordered[-1] / 1e6 if count else None,
    }


class Tally:
    """What the attacker saw: statuses (with the problem's reason), Retry-After, latency."""

    def __init__(self) -> None:
        self.statuses: Counter[str] = Counter()
        self.retry_after: Counter[str] = Counter()
        self.latency_ns: defaultdict[str, list[int]] = defaultdict(list)
        self.errors: Counter[str] = Counter()
        self.reconnects = 0

    def add(self, response: Response, elapsed_ns: int) -> None:
        key = f"{response.status} {response.reason}".strip()
        self.statuses[key] += 1
        if response.retry_after:
            self.retry_after[key] += 1
        self.latency_ns[key].append(elapsed_ns)

    def result(self, **extra: Any) -> dict[str, Any]:
        return {
            "statuses": dict(self.statuses),
            "retry_after": dict(self.retry_after),
            "latency": {k: percentiles(v) for k, v in self.latency_ns.items()},
            "errors": dict(self.errors),
            "reconnects": self.reconnects,
            **extra,
        }


async def _connect(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.wait_for(asyncio.open_connection(HOST, port), _TIMEOUT_S)


def _close(writer: asyncio.StreamWriter | None) -> None:
    if writer is not None:
        with contextlib.suppress(Exception):
            writer.close()


Connection = tuple[asyncio.StreamReader, asyncio.StreamWriter]


async def _requests(
    port: int, request: bytes, until: float, tally: Tally, opened: Connection | None = None
) -> None:
    """`request` back to back on one connection until `until`, reconnecting when closed."""
    reader, writer = opened if opened is not None else (None, None)
    first = opened is None
    while time.monotonic() < until:
        try:
            if writer is None or reader is None:
                if not first:
                    tally.reconnects += 1
                first = False
                reader, writer = await _connect(port)
            started = time.perf_counter_ns()
            writer.write(request)
            response = await asyncio.wait_for(read_response(reader), _TIMEOUT_S)
            tally.add(response, time.perf_counter_ns() - started)
            if response.close:
                _close(writer)
                reader, writer = None, None
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
            tally.errors[type(exc).__name__] += 1
            _close(writer)
            reader, writer = None, None
            await asyncio.sleep(0.01)
    _close(writer)


async def logins(args: argparse.Namespace) -> dict[str, Any]:
    requests = []
    for email in args.emails:
        body = urllib.parse.urlencode(
            {"grant_type": "password", "username": email, "password": args.password}
        ).encode()
        requests.append(
            b"POST /v1/auth/token HTTP/1.1\r\nHost: gateway\r\n"
            b"Content-Type: application/x-www-form-urlencoded\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (len(body), body)
        )
    tally = Tally()
    _say("ready")  # the parent waits for this line
    started = time.monotonic()
    until = started + args.duration
    await asyncio.gather(
        *(
            _requests(args.port, requests[n % len(requests)], until, tally)
            for n in range(args.concurrency)
        )
    )
    return tally.result(seconds=time.monotonic() - started, concurrency=args.concurrency)


async def _idle(port: int, until: float, tally: Tally, opened: Connection | None) -> None:
    """A connection that sends nothing, opened again whenever the gateway closes it."""
    while time.monotonic() < until:
        if opened is None:
            try:
                opened = await _connect(port)
            except (OSError, TimeoutError) as exc:
                tally.errors[type(exc).__name__] += 1
                await asyncio.sleep(0.01)
                continue
            tally.reconnects += 1
        reader, writer = opened
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(reader.read(), max(0.0, until - time.monotonic()))
        except OSError as exc:
            tally.errors[type(exc).__name__] += 1
        finally:
            _close(writer)
            opened = None


async def connections(args: argparse.Namespace) -> dict[str, Any]:
    request = (
        b"GET /v1/users/me HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer %s\r\n\r\n"
        % args.token.encode()
    )
    active_tally, idle_tally = Tally(), Tally()
    every = max(1, round(args.connections / args.active)) if args.active else 0
    opening = asyncio.Semaphore(args.open_concurrency)

    async def open_one() -> Connection | None:
        async with opening:
            try:
                return await _connect(args.port)
            except (OSError, TimeoutError) as exc:
                idle_tally.errors[f"open {type(exc).__name__}"] += 1
                return None

    # All open first, in order, so that which are past the gateway's cap is decided by
    # the order alone; then the active ones start sending.
    started = time.monotonic()
    opened = await asyncio.gather(*(open_one() for _ in range(args.connections)))
    ramp_s = time.monotonic() - started
    held = sum(1 for c in opened if c is not None)
    _say(f"ready {held} {ramp_s:.2f}")  # the parent waits for it
    until = time.monotonic() + args.duration
    tasks = [
        asyncio.create_task(
            _requests(args.port, request, until, active_tally, connection)
            if every and n % every == 0
            else _idle(args.port, until, idle_tally, connection)
        )
        for n, connection in enumerate(opened)
    ]
    await asyncio.gather(*tasks)
    return active_tally.result(
        idle=idle_tally.result(),
        connections=args.connections,
        held_at_ready=held,
        active=sum(1 for n in range(args.connections) if every and n % every == 0),
        ramp_s=ramp_s,
        seconds=args.duration,
    )


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="_abuseload.py")
    sub = parser.add_subparsers(dest="mode", required=True)
    flood = sub.add_parser("logins")
    flood.add_argument("--port", type=int, required=True)
    flood.add_argument("--concurrency", type=int, default=200)
    flood.add_argument("--duration", type=float, default=15.0)
    flood.add_argument("--password", required=True)
    flood.add_argument("emails", nargs="+")
    hold = sub.add_parser("connections")
    hold.add_argument("--port", type=int, required=True)
    hold.add_argument("--connections", type=int, default=4096)
    hold.add_argument("--active", type=int, default=1024)
    hold.add_argument("--duration", type=float, default=20.0)
    hold.add_argument("--open-concurrency", type=int, default=256)
    hold.add_argument("--token", required=True)
    return parser.parse_args(argv)


def _run() -> None:
    args = parse_args()
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        import uvloop  # noqa: PLC0415

        uvloop.install()
    except ImportError:
        pass
    started = time.process_time()
    result = asyncio.run(logins(args) if args.mode == "logins" else connections(args))
    result["cpu_s"] = time.process_time() - started
    sys.stdout.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    _run()
