"""Real service processes for tests: started with `python -m`, watched through their logs."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

from tests.support.keys import signing_key_file
from tests.support.tokens import GATEWAY_SCOPES, GATEWAY_SECRET

SERVING = re.compile(r"serving (?P<services>.+) on (?P<host>[^\s]+):(?P<port>\d+)$")
PREFIXES = ("USERS_", "AI_", "GATEWAY_", "ANTHROPIC_", "TANDEM_")


def clean_env(extra: Mapping[str, str]) -> dict[str, str]:
    """This environment without any Tandem setting, plus `extra`.

    A users service signs with the tests' key unless `extra` says otherwise, so that no
    test process generates a development key under the checkout's ./data.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(PREFIXES)}
    if not any(k.startswith("USERS_TOKEN_") for k in extra):
        env["USERS_TOKEN_SIGNING_KEY_FILE"] = str(signing_key_file())
    # A gateway holds the secret of the tests' gateway account (migrate_users makes it;
    # processes that migrate for themselves run `create_gateway_account`).
    if not any(k.startswith("GATEWAY_CLIENT_SECRET") for k in extra):
        env["GATEWAY_CLIENT_SECRET"] = GATEWAY_SECRET
    env.update(extra)
    return env


async def create_gateway_account(users_env: Mapping[str, str], directory: Path) -> dict[str, str]:
    """The gateway's service account, made as `make run` makes it (the real command);
    the gateway settings that point at its secret."""
    secret_file = directory / "gateway-client-secret"
    code, output = await run_command(
        [
            "-m",
            "users_service",
            "create-service-account",
            "gateway",
            "--scope",
            ",".join(sorted(GATEWAY_SCOPES)),
            "--secret-file",
            str(secret_file),
        ],
        users_env,
    )
    assert code == 0, output
    return {"GATEWAY_CLIENT_SECRET_FILE": str(secret_file)}


class ServiceProcess:
    """A child process whose output lines (stdout and stderr) are collected and can be awaited."""

    def __init__(self, args: Sequence[str], env: Mapping[str, str], cwd: str | None = None):
        self.args = [sys.executable, *args]
        self.env = clean_env(env)
        self.cwd = cwd
        self.lines: list[str] = []
        self._changed = asyncio.Condition()
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    @property
    def process(self) -> asyncio.subprocess.Process:
        assert self._process is not None, "not started"
        return self._process

    async def start(self) -> ServiceProcess:
        self._process = await asyncio.create_subprocess_exec(
            *self.args,
            env=self.env,
            cwd=self.cwd,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        self._reader = asyncio.create_task(self._read())
        return self

    async def _read(self) -> None:
        assert self.process.stdout is not None
        async for raw in self.process.stdout:
            async with self._changed:
                self.lines.append(raw.decode(errors="replace").rstrip("\n"))
                self._changed.notify_all()
        async with self._changed:
            self._changed.notify_all()

    async def wait_for_line(self, pattern: re.Pattern[str], timeout: float = 30) -> re.Match[str]:
        """The first log line matching `pattern`; fails if the process ends first."""

        def find() -> re.Match[str] | None:
            for line in self.lines:
                match = pattern.search(line)
                if match:
                    return match
            return None

        async with asyncio.timeout(timeout), self._changed:
            while True:
                match = find()
                if match:
                    return match
                if self._reader is not None and self._reader.done():
                    raise AssertionError(
                        f"process exited ({self.process.returncode}) before logging "
                        f"{pattern.pattern!r}:\n" + self.output
                    )
                await self._changed.wait()

    async def wait_serving(self, timeout: float = 30) -> str:
        """The address the service listens on, once it logs that it serves."""
        match = await self.wait_for_line(SERVING, timeout)
        return f"{match['host']}:{match['port']}"

    async def wait(self, timeout: float = 30) -> int:
        async with asyncio.timeout(timeout):
            code = await self.process.wait()
            if self._reader is not None:
                await self._reader
        return code

    def send_signal(self, signum: int = signal.SIGTERM) -> None:
        self.process.send_signal(signum)

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    async def stop(self) -> None:
        if self._process is None or self._process.returncode is not None:
            if self._reader is not None:
                await self._reader
            return
        self.send_signal(signal.SIGTERM)
        try:
            await self.wait(timeout=15)
        except TimeoutError:
            self.process.kill()
            await self.wait()

    async def __aenter__(self) -> ServiceProcess:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


async def run_command(
    args: Sequence[str], env: Mapping[str, str], timeout: float = 60
) -> tuple[int, str]:
    """Run `python args...` to completion; its exit code and combined output."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        *args,
        env=clean_env(env),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(timeout):
        out, _ = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(errors="replace")
