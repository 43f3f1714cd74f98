"""Benchmark of the ai service's concurrency toward the provider.

    .venv/bin/python bench/ai_bench.py [--calls 200] [--latency 0.5] [--json out.json]
        [--admin-url URL | --no-postgres]

Starts the fake Messages API (tests/support/fake_anthropic.py) answering every request
after `--latency` seconds, starts `python -m ai_service` against it as a real process
(ANTHROPIC_BASE_URL, AI_MAX_CONCURRENCY=--calls), then fires `--calls` concurrent
AnalyzeText calls with distinct texts from this process and reports the total wall time
against the upstream latency. TARGET: all calls finish in under 2x the upstream
latency - the service adds waiting, not serialisation. It runs once on SQLite in a
temporary folder (the embedded default) and once on a PostgreSQL database of its own
(created on TEST_DATABASE_URL's server and dropped afterwards).

In the same run it measures the service with the offline analyzer on 2 KB texts
(calls/s at 16 concurrent callers), the figure a deployment without a key gets.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from typing import TypedDict

import _fake_upstream
import _report
import grpc
from _config import add_common_options, log
from _procs import BENCH, ROOT, cancel_on_signals
from _report import Target, target

from tandem_protos.ai.v1 import analysis_pb2, analysis_pb2_grpc
from tests.support.harness import Child, child_env, run
from tests.support.postgres import ThrowawayDatabases, admin_url, dsn
from tests.support.tokens import service_bearer
from tests.support.users_standin import running_users_standin

SAMPLE = (
    "The blender arrived quickly and setup took two minutes. The motor is impressively "
    "powerful: it crushes ice in seconds and makes silky smoothies. However, it is "
    "extremely loud, and the lid started leaking after two weeks, which is really "
    "disappointing for a product at this price. Customer support was friendly but slow. "
)
# All calls within this many times the upstream latency: waiting, not serialisation.
RATIO_TO_LATENCY_MAX = 2.0
OFFLINE_CALLERS = 16


class Concurrency(TypedDict):
    calls: int
    upstream_latency_s: float
    wall_s: float
    ratio_to_latency: float
    failures: int
    target: Target


class Offline(TypedDict):
    text_bytes: int
    concurrency: int
    calls: int
    calls_per_s: float
    p50_ms: float
    p99_ms: float


class Results(TypedDict):
    cores: int | None
    python: str
    # By store: SQLite, PostgreSQL.
    concurrency: dict[str, Concurrency]
    offline: Offline


class Service:
    """`python -m ai_service`, migrated, against the stand-in users service; a service
    account's token for its calls (the stand-in knows the tests' signing key)."""

    def __init__(self, env: dict[str, str], users: str) -> None:
        self.env = child_env({**env, "AI_ADDR": "127.0.0.1:0", "AI_USERS_TARGET": users})
        self.metadata = (("authorization", service_bearer()),)
        self.child = Child(
            [sys.executable, "-m", "ai_service"], self.env, str(ROOT), name="ai service"
        )

    async def __aenter__(self) -> analysis_pb2_grpc.AnalysisServiceAsyncStub:
        code, output = await run([sys.executable, "-m", "ai_service", "migrate"], self.env)
        if code != 0:
            raise SystemExit(f"ai_service migrate failed:\n{output}")
        await self.child.start()
        self.channel = grpc.aio.insecure_channel(await self.child.wait_serving())
        return analysis_pb2_grpc.AnalysisServiceStub(self.channel)

    async def __aexit__(self, *_: object) -> None:
        await self.channel.close(None)
        await self.child.stop()

    def request(self, text: str, user: str | None = None) -> analysis_pb2.AnalyzeTextRequest:
        return analysis_pb2.AnalyzeTextRequest(text=text, user_id=user or str(uuid.uuid4()))


async def concurrency_phase(
    store: str, calls: int, latency: float, database_url: str, users: str
) -> Concurrency:
    fake = Child(
        [sys.executable, str(BENCH / "_fake_upstream.py"), str(latency)],
        child_env(),
        name="fake Messages API",
    )
    async with fake:
        fake_env = await fake.wait_for(_fake_upstream.parse_ready, what="that it is ready")
        env = {
            **fake_env,
            "AI_DATABASE_URL": database_url,
            "AI_MAX_CONCURRENCY": str(calls),
            "AI_ACCESS_LOG": "false",
            # Counted as always, never reached: the bench measures, it does not abuse.
            "AI_ANALYSES_PER_MINUTE": "1000000000",
            "AI_MODEL": "claude-bench",
        }
        service = Service(env, users)
        async with service as stub:
            metadata = service.metadata
            await stub.AnalyzeText(service.request("warm-up " + SAMPLE), metadata=metadata)
            started = time.perf_counter()
            # One user each: a user's own calls share AI_MAX_CONCURRENCY_PER_USER slots.
            results = await asyncio.gather(
                *(
                    stub.AnalyzeText(
                        service.request(f"{i}: {SAMPLE}"), timeout=30, metadata=metadata
                    )
                    for i in range(calls)
                ),
                return_exceptions=True,
            )
            wall = time.perf_counter() - started
    failures = sum(isinstance(r, BaseException) for r in results)
    ratio = wall / latency
    return {
        "calls": calls,
        "upstream_latency_s": latency,
        "wall_s": wall,
        "ratio_to_latency": ratio,
        "failures": failures,
        "target": target(
            f"{calls} concurrent AnalyzeText on {store}, wall time / upstream latency",
            ratio if not failures else None,
            "<=",
            RATIO_TO_LATENCY_MAX,
        ),
    }


async def offline_phase(seconds: float, concurrency: int, workdir: str, users: str) -> Offline:
    text = (SAMPLE * 6)[:2048]
    env = {
        "AI_DATABASE_URL": f"sqlite+aiosqlite:///{workdir}/offline.db",
        "AI_ACCESS_LOG": "false",
        "AI_PROVIDER": "offline",
        "AI_ANALYSES_PER_MINUTE": "1000000000",
        # Every call is a new analysis, not a cache hit.
        "AI_CACHE_TTL_SECONDS": "0",
    }
    latencies: list[float] = []
    service = Service(env, users)
    async with service as stub:
        metadata = service.metadata
        user = str(uuid.uuid4())
        await stub.AnalyzeText(service.request(text, user), metadata=metadata)
        deadline = time.perf_counter() + seconds

        async def caller(n: int) -> None:
            i = 0
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                request = service.request(f"{n}.{i} {text}"[:2048], user)
                await stub.AnalyzeText(request, metadata=metadata)
                latencies.append(time.perf_counter() - started)
                i += 1

        started = time.perf_counter()
        await asyncio.gather(*(caller(n) for n in range(concurrency)))
        wall = time.perf_counter() - started
    latencies.sort()
    return {
        "text_bytes": len(text.encode()),
        "concurrency": concurrency,
        "calls": len(latencies),
        "calls_per_s": len(latencies) / wall,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
    }


async def run_bench(args: argparse.Namespace) -> Results:
    cancel_on_signals(log)
    concurrency: dict[str, Concurrency] = {}
    async with running_users_standin() as (_, users):
        with tempfile.TemporaryDirectory(prefix="tandem-ai-bench-") as workdir:
            sqlite = f"sqlite+aiosqlite:///{workdir}/concurrency.db"
            log(f"{args.calls} concurrent calls on SQLite")
            concurrency["SQLite"] = await concurrency_phase(
                "SQLite", args.calls, args.latency, sqlite, users
            )
            if not args.no_postgres:
                databases = ThrowawayDatabases("tandem_bench_ai_", admin_url(args.admin_url))
                await databases.drop_stale()
                database = await databases.create()
                try:
                    url = dsn(database.set(drivername="postgresql+asyncpg"))
                    log(f"{args.calls} concurrent calls on PostgreSQL")
                    concurrency["PostgreSQL"] = await concurrency_phase(
                        "PostgreSQL", args.calls, args.latency, url, users
                    )
                finally:
                    await databases.drop(database.database)
            log(f"offline analyzer, {OFFLINE_CALLERS} callers, {args.offline_seconds:g} s")
            offline = await offline_phase(args.offline_seconds, OFFLINE_CALLERS, workdir, users)
    return {
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "concurrency": concurrency,
        "offline": offline,
    }


def render(results: Results) -> str:
    out = ["", f"ai service, {results['cores']} cores, Python {results['python']}"]
    for where, phase in results["concurrency"].items():
        out.append(
            f"{phase['calls']} concurrent AnalyzeText on {where}, upstream "
            f"{phase['upstream_latency_s'] * 1000:.0f} ms: all done in "
            f"{phase['wall_s'] * 1000:.0f} ms = {phase['ratio_to_latency']:.2f}x the upstream "
            f"latency; {phase['failures']} failures"
        )
    offline = results["offline"]
    out.append(
        f"offline analyzer through the service, {offline['text_bytes']} B texts, "
        f"{offline['concurrency']} callers: {offline['calls_per_s']:.0f} calls/s, "
        f"p50 {offline['p50_ms']:.1f} ms, p99 {offline['p99_ms']:.1f} ms"
    )
    targets = [phase["target"] for phase in results["concurrency"].values()]
    return "\n".join(out + _report.render_verdicts(targets, []))


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--offline-seconds", type=float, default=5.0)
    add_common_options(parser)
    parser.add_argument(
        "--no-postgres", action="store_true", help="measure on SQLite only (the default store)"
    )
    args = parser.parse_args()
    return _report.run_and_report(run_bench(args), render, args.json_path, log)


if __name__ == "__main__":
    raise SystemExit(main())
