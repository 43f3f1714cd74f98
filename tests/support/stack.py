"""The whole stack started exactly as the README's run command (`make run`) starts it."""

from __future__ import annotations

import asyncio
import re
import tempfile
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

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
    stack = RunningStack(make.process, make.lines, users, ai, gateway, full)
    try:
        await make.wait_for_line(READY, ready_timeout)
        yield stack
    finally:
        await make.stop(within=60)
        keys.cleanup()
