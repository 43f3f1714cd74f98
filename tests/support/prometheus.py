"""Debian's real Prometheus server (`apt-get install prometheus`; `.ci/run` installs it),
scraping the addresses a test gives it, and its HTTP API."""

from __future__ import annotations

import asyncio
import os
import shutil
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from tests.support.harness import Child, free_port


def binary(name: str) -> str:
    """`prometheus` or `promtool`; skips without it, except in CI (CI=true): fails."""
    found = shutil.which(name)
    if found:
        return found
    message = f"{name} is not installed (Debian: apt-get install prometheus)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI must run this test: {message}")
    pytest.skip(message)


def scrape_config(targets: Mapping[str, str], interval: str = "1s") -> str:
    """A prometheus.yml scraping each job's one target (host:port) every `interval`."""
    jobs = "".join(
        f"  - job_name: {job}\n    static_configs:\n      - targets: ['{target}']\n"
        for job, target in targets.items()
    )
    return (
        f"global:\n  scrape_interval: {interval}\n  evaluation_interval: {interval}\n"
        f"scrape_configs:\n{jobs}"
    )


class Prometheus:
    def __init__(self, url: str) -> None:
        self.url = url

    async def query(self, client: httpx.AsyncClient, promql: str) -> float | None:
        """The value of an instant query with one result; None while it has none."""
        reply = await client.get(f"{self.url}/api/v1/query", params={"query": promql})
        reply.raise_for_status()
        result = reply.json()["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    async def wait_for(self, promql: str, at_least: float, timeout: float = 30) -> float:
        """The query's value once it reaches `at_least` (Prometheus scrapes every second)."""
        async with httpx.AsyncClient(timeout=5) as client, asyncio.timeout(timeout):
            while True:
                value = await self.query(client, promql)
                if value is not None and value >= at_least:
                    return value
                # Nothing to await: the next scrape is Prometheus' own, in its process.
                await asyncio.sleep(0.25)


@asynccontextmanager
async def running_prometheus(
    targets: Mapping[str, str], directory: Path
) -> AsyncIterator[Prometheus]:
    config = directory / "prometheus.yml"
    config.write_text(scrape_config(targets))
    address = f"127.0.0.1:{free_port()}"
    child = Child(
        [
            binary("prometheus"),
            f"--config.file={config}",
            f"--storage.tsdb.path={directory / 'data'}",
            f"--web.listen-address={address}",
        ],
        dict(os.environ),
        str(directory),
        name="prometheus",
    )
    async with child:
        prometheus = Prometheus(f"http://{address}")

        async def ready() -> bool:
            try:
                async with httpx.AsyncClient(timeout=2) as client:
                    return (await client.get(f"{prometheus.url}/-/ready")).status_code == 200
            except httpx.HTTPError:
                return False

        await child.wait_ready(ready, timeout=60)
        yield prometheus
