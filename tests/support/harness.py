"""Child processes for the tests and the benchmarks: started, awaited, stopped, never left behind.

Every child starts through `spawn`, in a session of its own (a Ctrl-C at the terminal
reaches only this process, which then stops its children in order) and, on Linux, asks
the kernel for SIGTERM when this process dies, however it dies (PR_SET_PDEATHSIG, by
`servicekit.children`, as `make run` does), so a killed test run or benchmark leaves no
server behind. `Child` keeps a child's output (stdout and stderr, line by line) and
waits for what it says: that it serves, and where (`servicekit.server.parse_serving`,
the services' and the gateway's line), or any line.

tests/support/processes.py adds what only the tests want (their signing key, the
gateway's secret, `python -m` commands); the benchmarks (bench/) use this module as it is.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import os
import random
import re
import signal
import socket
import time
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from types import TracebackType
from typing import Self, TypeVar

from servicekit.children import die_with_parent
from servicekit.server import parse_serving

T = TypeVar("T")

# Below 32768, where Linux's ip_local_port_range starts: a port in that range can be
# held for a moment by any client socket.
PORT_RANGE = (20_000, 32_767)
TANDEM_PREFIXES = ("USERS_", "AI_", "GATEWAY_", "ANTHROPIC_", "TANDEM_")
STOP_WITHIN_S = 15.0


def free_port(taken: Collection[int] = ()) -> int:
    """A port in PORT_RANGE that nothing is bound to right now, not in `taken`, and not
    among the last `_RECENT_PORTS` this process handed out: picks made before the first is
    bound (a stack's three services) are distinct, where drawing at random alone once gave
    the gateway the users service's port."""
    rng = random.Random()
    for _ in range(200):
        port = rng.randint(*PORT_RANGE)
        if port in taken or port in _handed_out:
            continue
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        _handed_out.append(port)
        return port
    raise RuntimeError(f"no free port in {PORT_RANGE}")


# A tenth of PORT_RANGE: a run of tests or a benchmark binds far fewer at once.
_RECENT_PORTS = 1024
_handed_out: collections.deque[int] = collections.deque(maxlen=_RECENT_PORTS)


def child_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This environment without any Tandem setting of the caller's shell, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(TANDEM_PREFIXES)}
    env.update(extra or {})
    return env


async def spawn(
    command: Sequence[str],
    env: Mapping[str, str],
    *,
    cwd: str | os.PathLike[str] | None = None,
    stdin: int = asyncio.subprocess.DEVNULL,
) -> asyncio.subprocess.Process:
    """`command` as a child that dies with this process; stdout and stderr in one pipe."""
    return await asyncio.create_subprocess_exec(
        *die_with_parent(command),
        env=dict(env),
        cwd=cwd,
        stdin=stdin,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )


async def terminate(process: asyncio.subprocess.Process, *, within: float) -> None:
    """SIGTERM, then SIGKILL if the process has not exited `within` seconds later."""
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), within)
    except TimeoutError:
        await kill(process)


async def kill(process: asyncio.subprocess.Process) -> None:
    """SIGKILL, unless the process has exited; either way reap it."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()


async def run(
    command: Sequence[str],
    env: Mapping[str, str],
    *,
    cwd: str | os.PathLike[str] | None = None,
    timeout: float = 60,
) -> tuple[int, str]:
    """Run `command` to completion: its exit code and output. Killed if it overruns."""
    process = await spawn(command, env, cwd=cwd)
    try:
        async with asyncio.timeout(timeout):
            out, _ = await process.communicate()
    finally:
        await kill(process)
    assert process.returncode is not None
    return process.returncode, out.decode(errors="replace")


class Child:
    """A child process whose output lines are collected and can be awaited."""

    def __init__(
        self,
        command: Sequence[str],
        env: Mapping[str, str],
        cwd: str | None = None,
        *,
        name: str | None = None,
    ) -> None:
        self.command = list(command)
        self.env = dict(env)
        self.cwd = cwd
        self.name = name or " ".join(self.command)
        self.lines: list[str] = []
        # Where it serves, once `wait_serving` has seen it say so.
        self.address = ""
        self._changed = asyncio.Condition()
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    @property
    def process(self) -> asyncio.subprocess.Process:
        assert self._process is not None, "not started"
        return self._process

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.lines[-lines:])

    def exited(self) -> bool:
        return self._process is not None and self._process.returncode is not None

    async def start(self) -> Self:
        self._process = await spawn(self.command, self.env, cwd=self.cwd)
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

    def _ended(self) -> bool:
        return self._reader is not None and self._reader.done()

    def _exited_before(self, what: str) -> AssertionError:
        return AssertionError(
            f"{self.name} exited ({self.process.returncode}) before {what}:\n{self.output}"
        )

    async def wait_for(
        self, parse: Callable[[str], T | None], timeout: float = 30, *, what: str = "that line"
    ) -> T:
        """What `parse` makes of the first line it makes something of; fails if the
        process ends first, or if no such line comes within `timeout` seconds."""
        seen = 0
        try:
            async with asyncio.timeout(timeout), self._changed:
                while True:
                    for line in self.lines[seen:]:
                        found = parse(line)
                        if found is not None:
                            return found
                    seen = len(self.lines)
                    if self._ended():
                        raise self._exited_before(f"logging {what}")
                    await self._changed.wait()
        except TimeoutError:
            raise TimeoutError(
                f"{self.name} did not log {what} within {timeout:g} s:\n{self.tail()}"
            ) from None

    async def wait_for_line(self, pattern: re.Pattern[str], timeout: float = 30) -> re.Match[str]:
        """The first log line matching `pattern`; fails if the process ends first."""
        return await self.wait_for(pattern.search, timeout, what=repr(pattern.pattern))

    async def wait_serving(self, timeout: float = 30) -> str:
        """The address the service listens on, once it logs that it serves."""
        self.address = await self.wait_for(parse_serving, timeout, what="that it serves")
        return self.address

    async def wait_ready(self, ready: Callable[[], Awaitable[bool]], timeout: float = 60) -> None:
        """Until `ready()` says so (its errors count as not yet); fails if the process
        ends first or `timeout` seconds pass."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.exited():
                if self._reader is not None:
                    await self._reader
                raise self._exited_before("it was ready")
            with contextlib.suppress(Exception):
                if await ready():
                    return
            await asyncio.sleep(0.1)
        raise TimeoutError(f"{self.name} was not ready within {timeout:g} s:\n{self.tail()}")

    async def wait(self, timeout: float = 30) -> int:
        async with asyncio.timeout(timeout):
            code = await self.process.wait()
            if self._reader is not None:
                await self._reader
        return code

    def send_signal(self, signum: int = signal.SIGTERM) -> None:
        self.process.send_signal(signum)

    async def stop(self, within: float = STOP_WITHIN_S) -> None:
        """SIGTERM, SIGKILL if it is still there `within` seconds later; its output read."""
        if self._process is not None:
            await terminate(self._process, within=within)
        if self._reader is not None:
            await self._reader

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()
