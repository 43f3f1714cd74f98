"""The whole stack started exactly as the README's run command (`make run`) starts it."""

from __future__ import annotations

import asyncio
import random
import re
import socket
import tempfile
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass

from tests.conftest import ROOT
from tests.support.processes import clean_env

READY = re.compile(r"^stack\s+\| ready$")


def free_port() -> int:
    """A port that binds now, below the ephemeral range (where clients' ports collide)."""
    for _ in range(200):
        port = random.randint(20_000, 32_000)
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port between 20000 and 32000")


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
    process = await asyncio.create_subprocess_exec(
        "make",
        "--no-print-directory",
        "run",
        cwd=str(ROOT),
        env=full,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    lines: list[str] = []
    ready = asyncio.Event()
    assert process.stdout is not None

    async def read(stream: asyncio.StreamReader) -> None:
        while raw := await stream.readline():
            line = raw.decode(errors="replace").rstrip("\n")
            lines.append(line)
            if READY.match(line):
                ready.set()

    reader = asyncio.create_task(read(process.stdout))
    stack = RunningStack(process, lines, users, ai, gateway, full)
    try:
        async with asyncio.timeout(ready_timeout):
            waiting = asyncio.ensure_future(ready.wait())
            await asyncio.wait({waiting, reader}, return_when=asyncio.FIRST_COMPLETED)
            if not ready.is_set():
                waiting.cancel()
                raise AssertionError("the stack stopped before it was ready:\n" + stack.output)
        yield stack
    finally:
        if process.returncode is None:
            process.terminate()
            try:
                async with asyncio.timeout(60):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()
        await reader
        keys.cleanup()
