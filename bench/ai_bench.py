"""Benchmark of the ai service's concurrency toward the provider.

    .venv/bin/python bench/ai_bench.py [--calls 200] [--latency 0.5] [--json out.json]
        [--admin-url URL | --no-postgres]

Starts the fake Messages API (tests/support/fake_anthropic.py) answering every request
after `--latency` seconds, starts `python -m ai_service` against it as a real process
(ANTHROPIC_BASE_URL, AI_MAX_CONCURRENCY=--calls) and, beside it, the baseline: a bare
grpc.aio AnalysisService that makes the same single upstream call and nothing else
(bench/_bare_ai.py). Then, in `--rounds` alternating rounds, it fires `--calls`
concurrent AnalyzeText calls with distinct texts and users at each, and reports the
wall time of each round. TARGET: the ai service's median round within 1.15x the
baseline's - its own work (token check, session, quotas, slots, cache lookup, the
database write) adds little to what the call itself costs. CHECK: both within 2x the
upstream latency. It runs once on SQLite in a temporary folder (the embedded default)
and once on a PostgreSQL database of its own (created on TEST_DATABASE_URL's server
and dropped afterwards).

The calls' own usage gives the cost per analysis, with the prompt cache (the warm-up
call wrote it, every call of the rounds reads it) and as it would be without, at the
default prices (ai_service.pricing); the fake counts about four characters a token.

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
from _procs import BENCH, ROOT, cancel_on_signals, process_cpu_s
from _report import Target, target

from ai_service.domain import Usage
from ai_service.pricing import Prices
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
# The ai service's round within this many times the bare baseline's.
RATIO_TO_BARE_MAX = 1.15
OFFLINE_CALLERS = 16
MODEL = "claude-bench"


class Concurrency(TypedDict):
    calls: int
    upstream_latency_s: float
    # Each round's wall time, in the order run; the median stands for them.
    walls_s: list[float]
    bare_walls_s: list[float]
    wall_s: float
    bare_wall_s: float
    ratio_to_latency: float
    ratio_to_bare: float
    failures: int
    bare_failures: int
    # Median CPU milliseconds per call of the serving process.
    cpu_ms_per_call: float
    bare_cpu_ms_per_call: float
    # USD per analysis of the rounds' calls, as billed and as billed without the cache.
    cost_per_analysis_usd: float
    uncached_cost_per_analysis_usd: float
    targets: list[Target]


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
    load_avg_at_start: tuple[float, float, float]
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


class Burst(TypedDict):
    wall_s: float
    # CPU the serving process used per call: unlike the wall time, barely moved by
    # other processes on the machine.
    cpu_ms_per_call: float
    failures: int
    usages: list[Usage]


async def burst(
    stub: analysis_pb2_grpc.AnalysisServiceAsyncStub,
    metadata: tuple[tuple[str, str], ...],
    calls: int,
    tag: str,
    pid: int,
) -> Burst:
    """`calls` concurrent AnalyzeText with distinct texts and users, served by `pid`."""
    cpu = process_cpu_s(pid)
    started = time.perf_counter()
    # One user each: a user's own calls share AI_MAX_CONCURRENCY_PER_USER slots.
    results = await asyncio.gather(
        *(
            stub.AnalyzeText(
                analysis_pb2.AnalyzeTextRequest(
                    text=f"{tag} {i}: {SAMPLE}", user_id=str(uuid.uuid4())
                ),
                timeout=30,
                metadata=metadata,
            )
            for i in range(calls)
        ),
        return_exceptions=True,
    )
    wall = time.perf_counter() - started
    return {
        "wall_s": wall,
        "cpu_ms_per_call": (process_cpu_s(pid) - cpu) * 1000 / calls,
        "failures": sum(isinstance(r, BaseException) for r in results),
        "usages": [_usage(r) for r in results if isinstance(r, analysis_pb2.Analysis)],
    }


async def concurrency_phase(
    store: str, calls: int, rounds: int, latency: float, database_url: str, users: str
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
            "AI_MODELS": MODEL,
        }
        bare = Child(
            [sys.executable, str(BENCH / "_bare_ai.py")], child_env(env), name="bare baseline"
        )
        service = Service(env, users)
        async with service as stub, bare:
            bare_stub = analysis_pb2_grpc.AnalysisServiceStub(
                grpc.aio.insecure_channel(await bare.wait_serving())
            )
            metadata = service.metadata
            # Connections, the prompt cache's first write, first-call imports.
            await stub.AnalyzeText(service.request("warm-up " + SAMPLE), metadata=metadata)
            await bare_stub.AnalyzeText(service.request("warm-up " + SAMPLE))
            ours: list[Burst] = []
            theirs: list[Burst] = []
            for n in range(rounds):
                # Alternating which goes first, so that neither always meets the
                # machine just after the other's burst.
                for which in ("service", "bare") if n % 2 == 0 else ("bare", "service"):
                    if which == "service":
                        ours.append(await burst(stub, metadata, calls, f"r{n}", service.child.pid))
                    else:
                        theirs.append(await burst(bare_stub, (), calls, f"b{n}", bare.pid))
    prices = Prices()
    walls, bare_walls = [b["wall_s"] for b in ours], [b["wall_s"] for b in theirs]
    failures, bare_failures = sum(b["failures"] for b in ours), sum(b["failures"] for b in theirs)
    usages = [u for b in ours for u in b["usages"]]
    median, bare_median = statistics.median(walls), statistics.median(bare_walls)
    ratio, to_bare = median / latency, median / bare_median
    served = failures == 0 and bare_failures == 0
    return {
        "calls": calls,
        "upstream_latency_s": latency,
        "walls_s": walls,
        "bare_walls_s": bare_walls,
        "wall_s": median,
        "bare_wall_s": bare_median,
        "ratio_to_latency": ratio,
        "ratio_to_bare": to_bare,
        "failures": failures,
        "bare_failures": bare_failures,
        "cpu_ms_per_call": statistics.median(b["cpu_ms_per_call"] for b in ours),
        "bare_cpu_ms_per_call": statistics.median(b["cpu_ms_per_call"] for b in theirs),
        "cost_per_analysis_usd": statistics.fmean(map(prices.cost, usages or [Usage()])),
        "uncached_cost_per_analysis_usd": statistics.fmean(
            map(prices.cost_uncached, usages or [Usage()])
        ),
        "targets": [
            target(
                f"{calls} concurrent AnalyzeText on {store}, median round / bare grpc.aio's",
                to_bare if served else None,
                "<=",
                RATIO_TO_BARE_MAX,
            ),
            target(
                f"{calls} concurrent AnalyzeText on {store}, wall time / upstream latency",
                ratio if served else None,
                "<=",
                RATIO_TO_LATENCY_MAX,
                check=True,
            ),
        ],
    }


def _usage(analysis: analysis_pb2.Analysis) -> Usage:
    u = analysis.usage
    return Usage(
        u.input_tokens, u.output_tokens, u.cache_read_input_tokens, u.cache_creation_input_tokens
    )


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
                "SQLite", args.calls, args.rounds, args.latency, sqlite, users
            )
            if not args.no_postgres:
                databases = ThrowawayDatabases("tandem_bench_ai_", admin_url(args.admin_url))
                await databases.drop_stale()
                database = await databases.create()
                try:
                    url = dsn(database.set(drivername="postgresql+asyncpg"))
                    log(f"{args.calls} concurrent calls on PostgreSQL")
                    concurrency["PostgreSQL"] = await concurrency_phase(
                        "PostgreSQL", args.calls, args.rounds, args.latency, url, users
                    )
                finally:
                    await databases.drop(database.database)
            log(f"offline analyzer, {OFFLINE_CALLERS} callers, {args.offline_seconds:g} s")
            offline = await offline_phase(args.offline_seconds, OFFLINE_CALLERS, workdir, users)
    return {
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "load_avg_at_start": os.getloadavg(),
        "concurrency": concurrency,
        "offline": offline,
    }


def render(results: Results) -> str:
    load = ", ".join(f"{v:.2f}" for v in results["load_avg_at_start"])
    out = [
        "",
        f"ai service, {results['cores']} cores, Python {results['python']}, "
        f"load average at start {load}",
    ]
    for where, phase in results["concurrency"].items():
        rounds = ", ".join(
            f"{s * 1000:.0f}/{b * 1000:.0f}"
            for s, b in zip(phase["walls_s"], phase["bare_walls_s"], strict=True)
        )
        out += [
            f"{phase['calls']} concurrent AnalyzeText on {where}, upstream "
            f"{phase['upstream_latency_s'] * 1000:.0f} ms: median round "
            f"{phase['wall_s'] * 1000:.0f} ms against the bare baseline's "
            f"{phase['bare_wall_s'] * 1000:.0f} ms = {phase['ratio_to_bare']:.2f}x "
            f"({phase['ratio_to_latency']:.2f}x the upstream latency); "
            f"{phase['failures']} + {phase['bare_failures']} failures",
            f"  rounds, service/bare ms: {rounds}",
            f"  CPU per call (median round): {phase['cpu_ms_per_call']:.2f} ms in the service, "
            f"{phase['bare_cpu_ms_per_call']:.2f} ms in the bare baseline",
            f"  cost per analysis: ${phase['cost_per_analysis_usd']:.5f} with the prompt "
            f"cache, ${phase['uncached_cost_per_analysis_usd']:.5f} without",
        ]
    offline = results["offline"]
    out.append(
        f"offline analyzer through the service, {offline['text_bytes']} B texts, "
        f"{offline['concurrency']} callers: {offline['calls_per_s']:.0f} calls/s, "
        f"p50 {offline['p50_ms']:.1f} ms, p99 {offline['p99_ms']:.1f} ms"
    )
    targets = [t for phase in results["concurrency"].values() for t in phase["targets"]]
    return "\n".join(out + _report.render_verdicts(targets, []))


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--rounds", type=int, default=5, help="rounds of each, alternating")
    parser.add_argument("--offline-seconds", type=float, default=5.0)
    add_common_options(parser)
    parser.add_argument(
        "--no-postgres", action="store_true", help="measure on SQLite only (the default store)"
    )
    args = parser.parse_args()
    return _report.run_and_report(run_bench(args), render, args.json_path, log)


if __name__ == "__main__":
    raise SystemExit(main())
