"""Child processes of the benchmark (servers, load generators, py-spy) and CPU counters.

Every child gets SIGTERM when the benchmark process dies, however it dies
(PR_SET_PDEATHSIG), so a killed run leaves no server or load generator behind; its
database is dropped by the next run.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import re
import signal
import sys
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _config import OWN_ENVIRONMENT

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
SERVING = re.compile(r"serving (?P<services>.+) on (?P<host>[^\s]+):(?P<port>\d+)$")
_TANDEM_PREFIXES = ("USERS_", "AI_", "GATEWAY_", "ANTHROPIC_")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
_PR_SET_PDEATHSIG = 1


def clean_env(extra: Mapping[str, str]) -> dict[str, str]:
    """This environment without any Tandem setting of the caller's shell, plus `extra`."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(_TANDEM_PREFIXES) and k not in OWN_ENVIRONMENT
    }
    env.update(extra)
    return env


def _die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def pinned(command: Sequence[str], cpus: str | None) -> list[str]:
    return ["taskset", "-c", cpus, *command] if cpus else list(command)


async def spawn(
    command: Sequence[str],
    env: Mapping[str, str],
    *,
    stdout: int | None = None,
    stdin: int = asyncio.subprocess.DEVNULL,
) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *command,
        env=dict(env),
        cwd=ROOT,
        stdin=stdin,
        stdout=stdout,
        stderr=asyncio.subprocess.STDOUT if stdout is not None else None,
        preexec_fn=_die_with_parent,
        # Out of the terminal's process group: Ctrl-C reaches only the benchmark, which
        # then stops its children in order (servers last, database after them).
        start_new_session=True,
    )


@dataclass
class Server:
    """A gRPC server child process, started and watched through its log."""

    name: str
    command: list[str]
    env: dict[str, str]
    lines: list[str] = field(default_factory=list)
    address: str = ""
    process: asyncio.subprocess.Process | None = None
    _reader: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def exited(self) -> bool:
        return self.process is not None and self.process.returncode is not None

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.lines[-lines:])

    async def start(self, within_s: float = 60) -> str:
        self.process = await spawn(self.command, self.env, stdout=asyncio.subprocess.PIPE)
        serving: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read(serving))
        try:
            self.address = await asyncio.wait_for(serving, within_s)
        except (TimeoutError, EOFError):
            await self.stop()
            raise RuntimeError(f"{self.name} did not start:\n{self.tail()}") from None
        return self.address

    async def _read(self, serving: asyncio.Future[str]) -> None:
        assert self.process is not None
        assert self.process.stdout is not None
        async for raw in self.process.stdout:
            line = raw.decode(errors="replace").rstrip("\n")
            self.lines.append(line)
            match = SERVING.search(line)
            if match and not serving.done():
                serving.set_result(f"{match['host']}:{match['port']}")
        if not serving.done():
            serving.set_exception(EOFError())

    async def stop(self) -> None:
        if self.process is None:
            return
        await terminate(self.process, within=15)
        if self._reader is not None:
            await self._reader


async def terminate(process: asyncio.subprocess.Process, *, within: float) -> None:
    """SIGTERM, then SIGKILL if the process has not exited `within` seconds later."""
    if process.returncode is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        process.send_signal(signal.SIGTERM)
    try:
        await asyncio.wait_for(process.wait(), within)
    except TimeoutError:
        process.kill()
        await process.wait()


def cancel_on_signals(log: Callable[[str], None]) -> None:
    """SIGINT, SIGTERM or SIGHUP cancel the current task (once), so that its finally
    blocks stop the servers and drop the database; later signals must not cut that
    clean-up short. (SIGINT too: a shell starts background jobs with it ignored, which
    asyncio.run respects.)"""
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    assert main is not None
    interrupts: list[int] = []

    def interrupted(signum: int) -> None:
        if not interrupts:
            main.cancel()
        interrupts.append(signum)
        log(f"{signal.Signals(signum).name}: stopping the servers and cleaning up")

    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(signum, interrupted, signum)


def run_and_report(
    run: Coroutine[Any, Any, dict[str, Any]],
    render: Callable[[dict[str, Any]], str],
    json_path: str | None,
    log: Callable[[str], None],
) -> int:
    """Run a benchmark, print its report and write its results as JSON if asked to."""
    try:
        results = asyncio.run(run)
    except (KeyboardInterrupt, asyncio.CancelledError):
        log("interrupted")
        return 130
    sys.stdout.write(render(results))
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=2, default=str) + "\n")
        log(f"results written to {json_path}")
    return 0


def process_cpu_s(pid: int) -> float:
    """CPU seconds (user + system, all threads) a process has used; 0 once it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return 0.0
    # The command name may hold spaces; the fields after it are space-separated.
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def machine_cpu_s() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, all cores."""
    with open("/proc/stat", encoding="ascii") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    # user nice system idle iowait irq softirq steal (guest* already count in user)
    idle = values[3] + values[4]
    total = sum(values[:8])
    return (total - idle) / _CLOCK_TICKS, total / _CLOCK_TICKS


@dataclass
class CpuSample:
    busy: float
    total: float
    by_pid: dict[int, float]
    # Sessions ever opened on the run's database (pg_stat_database.sessions).
    pg_sessions: int | None = None


def cpu_sample(pids: Sequence[int], pg_sessions: int | None = None) -> CpuSample:
    busy, total = machine_cpu_s()
    return CpuSample(busy, total, {pid: process_cpu_s(pid) for pid in pids}, pg_sessions)


async def run_loadgen(
    args: Sequence[str],
    env: Mapping[str, str],
    *,
    cpus: str | None,
    on_start: Callable[[], Awaitable[None]] | None = None,
    on_stop: Callable[[], Awaitable[None]] | None = None,
    on_process: Callable[[asyncio.subprocess.Process], None] | None = None,
    within_s: float,
) -> dict[str, Any]:
    """Run one load generator phase; call the hooks as its window opens and closes."""
    command = pinned([sys.executable, str(BENCH / "_loadgen.py"), *args], cpus)
    process = await spawn(
        command, env, stdout=asyncio.subprocess.PIPE, stdin=asyncio.subprocess.PIPE
    )
    assert process.stdout is not None
    assert process.stdin is not None
    if on_process is not None:
        on_process(process)
    output: list[str] = []
    result: dict[str, Any] | None = None
    try:
        async with asyncio.timeout(within_s):
            async for raw in process.stdout:
                line = raw.decode(errors="replace").rstrip("\n")
                if line == "START" and on_start is not None:
                    await on_start()
                elif line == "STOP":
                    if on_stop is not None:
                        await on_stop()
                    # Only now may it close its connections: their server processes
                    # must still be there when their CPU counters are read.
                    process.stdin.write(b"sampled\n")
                    await process.stdin.drain()
                elif line.startswith("RESULT "):
                    result = json.loads(line[len("RESULT ") :])
                else:
                    output.append(line)
            await process.wait()
    finally:
        if process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            await process.wait()
    if process.returncode != 0 or result is None:
        raise RuntimeError(
            f"load generator {' '.join(args)} failed ({process.returncode}):\n"
            + "\n".join(output[-40:])
        )
    return result
