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
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import _procs
import grpc

from tandem_protos.ai.v1 import analysis_pb2, analysis_pb2_grpc
from tests.support.postgres import ThrowawayDatabases, admin_url, dsn

SAMPLE = (
    "The blender arrived quickly and setup took two minutes. The motor is impressively "
    "powerful: it crushes ice in seconds and makes silky smoothies. However, it is "
    "extremely loud, and the lid started leaking after two weeks, which is really "
    "disappointing for a product at this price. Customer support was friendly but slow. "
)


async def start_service(env: dict[str, str]) -> _procs.Server:
    """`python -m ai_service` migrated and serving, with `env` as its only Tandem settings."""
    full = _procs.clean_env(env)
    migrate = await _procs.spawn(
        [sys.executable, "-m", "ai_service", "migrate"], full, stdout=asyncio.subprocess.PIPE
    )
    output, _ = await migrate.communicate()
    if migrate.returncode != 0:
        raise SystemExit(f"ai_service migrate failed:\n{output.decode(errors='replace')}")
    server = _procs.Server("ai service", [sys.executable, "-m", "ai_service"], full)
    await server.start(within_s=30)
    return server


async def fake_upstream(latency: float) -> tuple[asyncio.subprocess.Process, dict[str, str]]:
    process = await _procs.spawn(
        [sys.executable, str(Path(__file__).with_name("_fake_upstream.py")), str(latency)],
        os.environ,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    line = (await process.stdout.readline()).decode().split()
    return process, {"ANTHROPIC_BASE_URL": line[2], "ANTHROPIC_API_KEY": line[4]}


async def concurrency_phase(calls: int, latency: float, database_url: str) -> dict[str, Any]:
    fake, fake_env = await fake_upstream(latency)
    try:
        env = {
            **fake_env,
            "AI_ADDR": "127.0.0.1:0",
            "AI_DATABASE_URL": database_url,
            "AI_MAX_CONCURRENCY": str(calls),
            "AI_ACCESS_LOG": "false",
            "AI_MODEL": "claude-bench",
        }
        server = await start_service(env)
        address = server.address
        try:
            async with grpc.aio.insecure_channel(address) as channel:
                stub = analysis_pb2_grpc.AnalysisServiceStub(channel)
                await stub.AnalyzeText(_request("warm-up " + SAMPLE))
                user = str(uuid.uuid4())
                started = time.perf_counter()
                results = await asyncio.gather(
                    *(
                        stub.AnalyzeText(_request(f"{i}: {SAMPLE}", user), timeout=30)
                        for i in range(calls)
                    ),
                    return_exceptions=True,
                )
                wall = time.perf_counter() - started
        finally:
            await server.stop()
    finally:
        assert fake.stdin is not None
        fake.stdin.close()
        await fake.wait()
    failures = [r for r in results if isinstance(r, BaseException)]
    return {
        "calls": calls,
        "upstream_latency_s": latency,
        "wall_s": wall,
        "ratio_to_latency": wall / latency,
        "failures": len(failures),
        "target_ratio": 2.0,
        "pass": not failures and wall < 2 * latency,
    }


async def offline_phase(seconds: float, concurrency: int, workdir: str) -> dict[str, Any]:
    text = (SAMPLE * 6)[:2048]
    env = {
        "AI_ADDR": "127.0.0.1:0",
        "AI_DATABASE_URL": f"sqlite+aiosqlite:///{workdir}/offline.db",
        "AI_ACCESS_LOG": "false",
        "AI_PROVIDER": "offline",
        # Every call is a new analysis, not a cache hit.
        "AI_CACHE_TTL_SECONDS": "0",
    }
    server = await start_service(env)
    address = server.address
    latencies: list[float] = []
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = analysis_pb2_grpc.AnalysisServiceStub(channel)
            user = str(uuid.uuid4())
            await stub.AnalyzeText(_request(text, user))
            deadline = time.perf_counter() + seconds

            async def caller(n: int) -> None:
                i = 0
                while time.perf_counter() < deadline:
                    started = time.perf_counter()
                    await stub.AnalyzeText(_request(f"{n}.{i} {text}"[:2048], user))
                    latencies.append(time.perf_counter() - started)
                    i += 1

            started = time.perf_counter()
            await asyncio.gather(*(caller(n) for n in range(concurrency)))
            wall = time.perf_counter() - started
    finally:
        await server.stop()
    latencies.sort()
    return {
        "text_bytes": len(text.encode()),
        "concurrency": concurrency,
        "calls": len(latencies),
        "calls_per_s": len(latencies) / wall,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
    }


def _request(text: str, user: str | None = None) -> analysis_pb2.AnalyzeTextRequest:
    return analysis_pb2.AnalyzeTextRequest(text=text, user_id=user or str(uuid.uuid4()))


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--offline-seconds", type=float, default=5.0)
    parser.add_argument("--json", type=Path)
    parser.add_argument(
        "--admin-url", help="PostgreSQL server (default $TEST_DATABASE_URL or local postgres)"
    )
    parser.add_argument(
        "--no-postgres", action="store_true", help="measure on SQLite only (the default store)"
    )
    args = parser.parse_args()
    concurrency: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="tandem-ai-bench-") as workdir:
        sqlite = f"sqlite+aiosqlite:///{workdir}/concurrency.db"
        concurrency["SQLite"] = await concurrency_phase(args.calls, args.latency, sqlite)
        if not args.no_postgres:
            databases = ThrowawayDatabases("tandem_bench_ai_", admin_url(args.admin_url))
            await databases.drop_stale()
            database = await databases.create()
            try:
                url = dsn(database.set(drivername="postgresql+asyncpg"))
                concurrency["PostgreSQL"] = await concurrency_phase(args.calls, args.latency, url)
            finally:
                await databases.drop(database.database)
        offline = await offline_phase(args.offline_seconds, 16, workdir)
    print(f"ai service, {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    for where, phase in concurrency.items():
        print(
            f"{phase['calls']} concurrent AnalyzeText on {where}, upstream "
            f"{args.latency * 1000:.0f} ms: all done in {phase['wall_s'] * 1000:.0f} ms = "
            f"{phase['ratio_to_latency']:.2f}x the upstream latency "
            f"(target < 2.0x): {'PASS' if phase['pass'] else 'FAIL'}; "
            f"{phase['failures']} failures"
        )
    print(
        f"offline analyzer through the service, {offline['text_bytes']} B texts, "
        f"{offline['concurrency']} callers: {offline['calls_per_s']:.0f} calls/s, "
        f"p50 {offline['p50_ms']:.1f} ms, p99 {offline['p99_ms']:.1f} ms"
    )
    if args.json:
        args.json.write_text(json.dumps({"concurrency": concurrency, "offline": offline}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
