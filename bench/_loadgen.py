"""The load generator: one process, N closed-loop callers, one workload, one phase.

Run by users_bench.py as `python bench/_loadgen.py --workload W ...`. Every caller
loops: take the next request, time the call with perf_counter_ns, record it. Calls
that complete in the measurement window (after the warm-up) count; stdout carries

    START               the window opened (the orchestrator samples CPU counters)
    STOP                the window closed
    RESULT {json}       calls, calls/s, latency percentiles per label, errors, CPU

gRPC workloads send pre-serialised request bytes and take the reply as bytes (no
serialisers on the stub), so the client spends its CPU on gRPC itself, not on
protobuf; the same client code drives the empty server and the users service.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import functools
import gc
import json
import math
import os
import random
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from typing import TypedDict

import grpc

from tandem_protos.users.v1 import auth_pb2, users_pb2

SERVICE = "/users.v1.UsersService/"
AUTH_SERVICE = "/users.v1.AuthService/"
CALL_TIMEOUT_S = 30.0
# Its lines on stdout (_procs.run_loadgen reads them), and the one it waits for on stdin.
START = "START"
STOP = "STOP"
RESULT = "RESULT "
SAMPLED = b"sampled\n"

Call = Callable[[], Awaitable[str]]
Close = Callable[[], Awaitable[None]]
# One gRPC method, its request and reply as bytes, with the call's timeout and metadata.
Send = Callable[[bytes], Awaitable[bytes]]


class Plan(TypedDict, total=False):
    """What the callers send, written by the orchestrator as JSON (`--plan`)."""

    ids: list[str]
    emails: list[str]
    password: str
    sql: str
    # (label, page size, page token) of each page the `list` workload alternates between
    list_pages: list[tuple[str, int, str]]


class Latency(TypedDict):
    calls: int
    calls_per_s: float
    mean_ms: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float


class LoadResult(TypedDict):
    workload: str
    concurrency: int
    window_s: float
    client_cpu_s: float
    errors: dict[str, int]
    # Calls and latency by label (the call's name, or the page it asked for).
    labels: dict[str, Latency]


class Failed(Exception):
    """A call that did not return what the workload expects."""


async def _grpc_calls(args: argparse.Namespace, plan: Plan) -> tuple[list[Call], Close]:
    channels = [grpc.aio.insecure_channel(args.target) for _ in range(args.channels)]
    method = {
        "get": SERVICE + "GetUser",
        "list": SERVICE + "ListUsers",
        "auth": SERVICE + "AuthenticateUser",
        "create": SERVICE + "CreateUser",
        "login": AUTH_SERVICE + "IssueToken",
        "refresh": AUTH_SERVICE + "IssueToken",
    }[args.workload]
    metadata = (("authorization", args.authorization),)
    # No serialisers: requests go out as the bytes built up front, replies stay bytes.
    stubs: list[Send] = [
        functools.partial(
            c.unary_unary(method, request_serializer=None, response_deserializer=None),
            timeout=CALL_TIMEOUT_S,
            metadata=metadata,
        )
        for c in channels
    ]
    # Shared by all callers: built once, before the clock starts.
    payloads = (
        [users_pb2.GetUserRequest(id=i).SerializeToString() for i in plan["ids"]]
        if args.workload == "get"
        else []
    )
    # One generator for all callers: they share one thread, so no lock is needed.
    rng = random.Random(args.seed)
    calls: list[Call] = []
    for k in range(args.concurrency):
        stub = stubs[k % len(stubs)]
        calls.append(_grpc_caller(args.workload, stub, plan, payloads, k, rng))

    async def close() -> None:
        for channel in channels:
            await channel.close(None)

    for channel in channels:
        await asyncio.wait_for(channel.channel_ready(), 10)
    return calls, close


def _grpc_caller(
    workload: str, stub: Send, plan: Plan, payloads: list[bytes], k: int, rng: random.Random
) -> Call:
    if workload == "get":
        choose = rng.choice

        async def get() -> str:
            await stub(choose(payloads))
            return "GetUser"

        return get

    if workload == "list":
        pages = [
            (str(label), users_pb2.ListUsersRequest(page_size=size, page_token=token))
            for label, size, token in plan["list_pages"]
        ]
        requests = [(label, request.SerializeToString()) for label, request in pages]
        turn = [k]

        async def list_page() -> str:
            label, request = requests[turn[0] % len(requests)]
            turn[0] += 1
            reply = await stub(request)
            if len(reply) < 100:
                raise Failed("short ListUsers page")
            return label

        return list_page

    if workload == "auth":
        request = users_pb2.AuthenticateUserRequest(
            email=plan["emails"][k % len(plan["emails"])], password=plan["password"]
        ).SerializeToString()

        async def authenticate() -> str:
            await stub(request)
            return "AuthenticateUser"

        return authenticate

    if workload in ("login", "refresh"):
        email = plan["emails"][k % len(plan["emails"])]
        login = auth_pb2.IssueTokenRequest(
            password=auth_pb2.PasswordGrant(email=email, password=plan["password"])
        ).SerializeToString()
        if workload == "login":

            async def log_in() -> str:
                await stub(login)
                return "IssueToken password"

            return log_in
        # Each caller keeps its own session and trades its latest refresh token; the
        # first call logs in (inside the warm-up).
        latest: list[str] = []

        async def refresh() -> str:
            if not latest:
                reply = auth_pb2.IssueTokenResponse.FromString(await stub(login))
                latest.append(reply.refresh_token)
                return "IssueToken password"
            grant = auth_pb2.RefreshTokenGrant(refresh_token=latest[0])
            reply = auth_pb2.IssueTokenResponse.FromString(
                await stub(auth_pb2.IssueTokenRequest(refresh_token=grant).SerializeToString())
            )
            latest[0] = reply.refresh_token
            return "IssueToken refresh_token"

        return refresh

    if workload == "create":
        prefix = f"bench.{os.getpid()}.{k}."
        counter = iter(range(sys.maxsize))

        async def create() -> str:
            request = users_pb2.CreateUserRequest(
                user=users_pb2.User(
                    email=f"{prefix}{next(counter)}@example.com", name="Bench Signup"
                ),
                password=plan["password"],
            )
            await stub(request.SerializeToString())
            return "CreateUser"

        return create

    raise ValueError(f"unknown workload {workload}")


async def _asyncpg_calls(args: argparse.Namespace, plan: Plan) -> tuple[list[Call], Close]:
    import asyncpg  # noqa: PLC0415 - only this workload needs it

    pool = await asyncpg.create_pool(args.dsn, min_size=args.pool_size, max_size=args.pool_size)
    sql = plan["sql"]
    ids = [uuid.UUID(i) for i in plan["ids"]]
    choose = random.Random(args.seed).choice

    async def fetch() -> str:
        row = await pool.fetchrow(sql, choose(ids), timeout=CALL_TIMEOUT_S)
        if row is None:
            raise Failed("no row")
        return "asyncpg"

    return [fetch] * args.concurrency, pool.close


class Recorder:
    def __init__(self) -> None:
        self.measuring = False
        self.stopping = False
        self.latencies: dict[str, list[int]] = collections.defaultdict(list)
        self.errors: collections.Counter[str] = collections.Counter()

    async def run(self, call: Call) -> None:
        clock = time.perf_counter_ns
        while not self.stopping:
            started = clock()
            try:
                label = await call()
            except grpc.aio.AioRpcError as exc:
                self._failed(exc.code().name)
                continue
            except Failed as exc:
                self._failed(str(exc))
                continue
            if self.measuring:
                self.latencies[label].append(clock() - started)

    def _failed(self, what: str) -> None:
        if self.measuring:
            self.errors[what] += 1


def summarise(samples_ns: list[int], window_s: float) -> Latency:
    ordered = sorted(samples_ns)
    count = len(ordered)

    def pct(p: float) -> float:
        # Nearest rank: the smallest sample with at least p % of them at or below it.
        return ordered[max(0, math.ceil(p / 100 * count) - 1)] / 1e6

    return {
        "calls": count,
        "calls_per_s": count / window_s,
        "mean_ms": sum(ordered) / count / 1e6,
        "p50_ms": pct(50),
        "p90_ms": pct(90),
        "p99_ms": pct(99),
        "p999_ms": pct(99.9),
        "max_ms": ordered[-1] / 1e6,
    }


async def main(args: argparse.Namespace, plan: Plan) -> LoadResult:
    workload = _asyncpg_calls if args.workload == "asyncpg" else _grpc_calls
    calls, close = await workload(args, plan)
    # What was built so far lives to the end; keep the collector from re-scanning it.
    gc.collect()
    gc.freeze()

    # SIGUSR1 closes the window early: a background load (logins) runs exactly as
    # long as the phase it disturbs.
    closed = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGUSR1, closed.set)
    recorder = Recorder()
    tasks = [asyncio.create_task(recorder.run(c)) for c in calls]
    await asyncio.sleep(args.warmup)
    cpu_started = time.process_time()
    started = time.perf_counter()
    recorder.measuring = True
    _say(START)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(closed.wait(), args.duration)
    recorder.measuring = False
    window = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    _say(STOP)
    recorder.stopping = True
    await asyncio.wait(tasks, timeout=CALL_TIMEOUT_S)
    for task in tasks:
        task.cancel()
    # The orchestrator reads the CPU counters of our database sessions before they go.
    await asyncio.wait_for(asyncio.to_thread(sys.stdin.readline), CALL_TIMEOUT_S)

    await close()
    return {
        "workload": args.workload,
        "concurrency": args.concurrency,
        "window_s": window,
        "client_cpu_s": cpu,
        "errors": dict(recorder.errors),
        "labels": {
            label: summarise(samples, window)
            for label, samples in sorted(recorder.latencies.items())
            if samples
        },
    }


def _say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else "")
    parser.add_argument(
        "--workload",
        required=True,
        choices=("get", "list", "auth", "create", "login", "refresh", "asyncpg"),
    )
    parser.add_argument("--target", help="host:port of the gRPC server")
    parser.add_argument(
        "--authorization", default="", help="`authorization` metadata of every gRPC call"
    )
    parser.add_argument("--dsn", help="PostgreSQL DSN (asyncpg workload)")
    parser.add_argument("--pool-size", type=int, default=10)
    parser.add_argument("--plan", required=True, help="JSON file: ids, emails, pages, sql")
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--channels", type=int, default=1)
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def _run() -> None:
    args = parse_args()
    with open(args.plan, encoding="utf-8") as f:
        plan: Plan = json.load(f)
    try:
        import uvloop  # noqa: PLC0415 - optional, as in servicekit.cli
    except ImportError:
        result = asyncio.run(main(args, plan))
    else:
        result = uvloop.run(main(args, plan))
    _say(RESULT + json.dumps(result))


if __name__ == "__main__":
    _run()
