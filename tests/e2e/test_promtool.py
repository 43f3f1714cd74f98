"""The alert rules pass Prometheus' own checker, and their tests (`promtool`, from
Debian's `prometheus` package; `.ci/run` installs it)."""

from __future__ import annotations

import asyncio

from tests.conftest import ROOT
from tests.support.prometheus import binary

RULES = ROOT / "deploy" / "prometheus"


async def promtool(*args: str) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        binary("promtool"),
        *args,
        cwd=RULES,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(60):
        out, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode()


async def test_the_alert_rules_are_valid() -> None:
    code, output = await promtool("check", "rules", "alerts.yml")
    assert code == 0, output
    assert "SUCCESS: 10 rules found" in output


async def test_the_alerts_fire_on_the_series_that_should_fire_them() -> None:
    code, output = await promtool("test", "rules", "alerts.test.yml")
    assert code == 0, output
