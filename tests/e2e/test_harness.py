"""tests/support/harness.py, which every test and benchmark starts its processes with:
its children die with the process that started them, however it dies."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tests.support.harness import Child, child_env, free_port, run

# Starts a child through the harness, says its pid, then waits to be killed.
PARENT = """
import asyncio, sys
from tests.support.harness import child_env, spawn

async def main():
    child = await spawn([sys.executable, "-c", "import time; time.sleep(120)"], child_env())
    print(child.pid, flush=True)
    await asyncio.sleep(120)

asyncio.run(main())
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _alive(pid)


def _command_line(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
async def test_a_child_gets_sigterm_when_its_parent_is_killed() -> None:
    async with Child([sys.executable, "-c", PARENT], child_env(), str(ROOT)) as parent:
        pid = int((await parent.wait_for_line(re.compile(r"^(\d+)$")))[1])
        await asyncio.sleep(0.5)
        # The harness's guard has become the command itself: same pid.
        assert "time.sleep(120)" in _command_line(pid)
        parent.send_signal(signal.SIGKILL)
        await parent.wait()
    gone = await asyncio.to_thread(_gone_within, pid, 10)
    if not gone:
        os.kill(pid, signal.SIGKILL)
    assert gone


async def test_a_command_that_cannot_run_says_so() -> None:
    code, output = await run(["no-such-command-anywhere"], child_env())
    assert code != 0
    assert "no-such-command-anywhere" in output


def test_free_ports_picked_before_any_is_bound_are_distinct() -> None:
    # At random alone, 1,024 picks from PORT_RANGE would repeat one about 40 times.
    picks = [free_port() for _ in range(1024)]
    assert len(set(picks)) == len(picks)
