"""The whole stack started exactly as the README's run command (`make run`) starts it."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import os
import re
import signal
import sys
import tempfile
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from tests.conftest import ROOT
from tests.support.harness import Child, free_port
from tests.support.processes import clean_env

READY = re.compile(r"^stack\s+\| ready$")


@dataclass
class RunningStack:
    process: asyncio.subprocess.Process
    lines: list[str]
    users: str
    ai: str
    gateway: str
    # The environment the stack runs with (its databases, its key files).
    env: dict[str, str]
    # `make run` itself, whose output lines can be awaited.
    make: Child

    @property
    def url(self) -> str:
        return f"http://{self.gateway}"

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def prefixed(self, name: str) -> list[str]:
        return [line for line in self.lines if line.startswith(f"{name:<7} | ")]


@asynccontextmanager
async def make_run(
    env: Mapping[str, str], *, ready_timeout: float = 90
) -> AsyncIterator[RunningStack]:
    """`make run` on free ports with `env`; yields once the stack printed that it is ready.

    Like `make run` with nothing configured, the users service generates its token
    signing key on first start, and the stack the gateway's service account: here in a
    temporary directory of this run, never in the checkout's ./data.
    """
    keys = tempfile.TemporaryDirectory(prefix="tandem-stack-keys-")
    users, ai, gateway = (f"127.0.0.1:{free_port()}" for _ in range(3))
    full = clean_env(
        {
            "USERS_ADDR": users,
            "AI_ADDR": ai,
            "GATEWAY_ADDR": gateway,
            "USERS_TOKEN_DEV_KEY_FILE": f"{keys.name}/users-token-key.pem",
            # make run writes the gateway's secret here (not in the checkout's ./data).
            "GATEWAY_CLIENT_SECRET_FILE": f"{keys.name}/gateway-client-secret",
            **env,
        }
    )
    make = Child(["make", "--no-print-directory", "run"], full, str(ROOT), name="make run")
    await make.start()
    stack = RunningStack(make.process, make.lines, users, ai, gateway, full, make)
    try:
        await make.wait_for_line(READY, ready_timeout)
        yield stack
    finally:
        await make.stop(within=60)
        keys.cleanup()


def stack_module() -> ModuleType:
    """deploy/stack.py (a script, not a package) as a module."""
    spec = importlib.util.spec_from_file_location("tandem_deploy_stack", ROOT / "deploy/stack.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    # Registered first: its dataclasses look their module up while they are made.
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def readme_first_steps() -> str:
    """The shell block of the README's "First steps", as it stands."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("### First steps") :]
    block = re.search(r"^```sh\n(.*?)^```$", section, re.MULTILINE | re.DOTALL)
    assert block is not None, "no sh block under First steps"
    return block[1]


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, from /proc (children of every thread)."""
    found: list[int] = []
    pending = [pid]
    while pending:
        parent = pending.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            with contextlib.suppress(FileNotFoundError):
                children = (task / "children").read_text().split()
                found += [int(c) for c in children]
                pending += [int(c) for c in children]
    return found


def command_line(pid: int) -> str:
    """The command line of `pid`; empty once it has gone."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except FileNotFoundError:
        return ""


async def exited(pid: int) -> None:
    """Once `pid` (not a child of this process) has exited: its pidfd turns readable."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    gone = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_reader(pidfd, gone.set)
    try:
        await gone.wait()
    finally:
        loop.remove_reader(pidfd)
        os.close(pidfd)


async def assert_stops_cleanly(stack: RunningStack) -> None:
    """`make run` stopped by a signal: every part stopped gracefully, the stack said so."""
    # make passes the signal on, waits for the stack to stop, then ends by the signal.
    code = await asyncio.wait_for(stack.process.wait(), 30)
    stopping = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    assert code == 0 or -code in stopping, stack.output
    assert "stack   | stopped" in stack.output
    assert any("servicekit.server [-] stopped" in line for line in stack.prefixed("users"))
    assert any("servicekit.server [-] stopped" in line for line in stack.prefixed("ai"))
    assert any("Finished server process" in line for line in stack.prefixed("gateway"))
