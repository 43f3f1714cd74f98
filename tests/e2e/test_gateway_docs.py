"""/docs works offline: headless Chromium renders Swagger UI from the gateway's own assets.

Needs Debian's `chromium` (`.ci/run` installs it). Without it the test skips, except in
CI (`CI=true`), where it fails.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.support.gateway import closed_port, gateway_settings, running_gateway

CHROMIUM_NAMES = ("/usr/bin/chromium", "chromium", "chromium-browser")


def chromium() -> str:
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    message = "Chromium is not installed (Debian: apt-get install chromium)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI must run the docs test: {message}")
    pytest.skip(message)


@pytest.fixture
async def gateway_url() -> AsyncIterator[str]:
    # No upstream is needed to serve the docs.
    target = f"127.0.0.1:{closed_port()}"
    async with running_gateway(gateway_settings(target, target)) as url:
        yield url


async def rendered_dom(browser: str, url: str, profile: Path) -> str:
    process = await asyncio.create_subprocess_exec(
        browser,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        # Every host but the gateway's is unresolvable: a CDN asset could not load.
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1",
        f"--user-data-dir={profile}",
        # Run the page's scripts (fetching /openapi.json, rendering) before dumping.
        "--virtual-time-budget=15000",
        "--dump-dom",
        url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(90):
        out, err = await process.communicate()
    assert process.returncode == 0, err.decode(errors="replace")[-2000:]
    return out.decode()


async def test_swagger_ui_renders_every_operation_without_internet(
    gateway_url: str, tmp_path: Path
) -> None:
    browser = chromium()
    async with httpx.AsyncClient(base_url=gateway_url) as client:
        page = (await client.get("/docs")).text
        schema = (await client.get("/openapi.json")).json()
        for asset in re.findall(r'(?:src|href)="([^"]+)"', page):
            assert asset.startswith("/static-docs/"), asset
            assert (await client.get(asset)).status_code == 200, asset
    assert "cdn" not in page.lower()

    dom = await rendered_dom(browser, f"{gateway_url}/docs", tmp_path / "profile")

    rendered = set(re.findall(r'class="opblock opblock-(\w+)[^"]*" id="operations-\w+-(\w+)"', dom))
    expected = {
        (method, operation["operationId"])
        for path in schema["paths"].values()
        for method, operation in path.items()
    }
    # 17, and the batch routes: batchAnalyze and the operations (get, list, cancel).
    assert len(expected) == 21
    assert rendered == expected
    paths = set(re.findall(r'class="opblock-summary-path" data-path="([^"]+)"', dom))
    assert paths == set(schema["paths"])
    assert "Tandem API" in dom


async def test_redoc_uses_only_local_assets(gateway_url: str) -> None:
    async with httpx.AsyncClient(base_url=gateway_url) as client:
        page = (await client.get("/redoc")).text
        assets = re.findall(r'(?:src|href)="([^"]+)"', page)
        assert assets
        for asset in assets:
            assert asset.startswith("/static-docs/"), asset
            assert (await client.get(asset)).status_code == 200, asset
    assert "fonts.googleapis" not in page
