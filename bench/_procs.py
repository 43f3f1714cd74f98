"""The benchmarks' load generators, CPU pinning, signals, and CPU counters read from /proc.

Every child starts through tests/support/harness.py, which makes it die with the
benchmark however the benchmark dies (PR_SET_PDEATHSIG), so a killed run leaves no
server or load generator behind; its database is dropped by the next run.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import sys
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import _loadgen
from _loadgen import LoadResult

from tests.support.harness import kill, spawn

ROOT = Path(__file__).resolve().parent.parent
BENCH = Path(__file__).resolve().parent
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def pinned(command: Sequence[str], cpus: str | None) -> list[str]:
    return ["taskset", "-c", cpus, *command] if cpus else list(command)


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


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants (uvicorn's workers are children of its supervisor)."""
    children: dict[int, list[int]] = collections.defaultdict(list)
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children[ppid].append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, ()))
    return found


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
) -> LoadResult:
    """Run one load generator phase; call the hooks as its window opens and closes."""
    command = pinned([sys.executable, str(BENCH / "_loadgen.py"), *args], cpus)
    process = await spawn(command, env, cwd=ROOT, stdin=asyncio.subprocess.PIPE)
    assert process.stdout is not None
    assert process.stdin is not None
    if on_process is not None:
        on_process(process)
    output: list[str] = []
    result: LoadResult | None = None
    try:
        async with asyncio.timeout(within_s):
            async for raw in process.stdout:
                line = raw.decode(errors="replace").rstrip("\n")
                if line == _loadgen.START and on_start is not None:
                    await on_start()
                elif line == _loadgen.STOP:
                    if on_stop is not None:
                        await on_stop()
                    # Only now may it close its connections: their server processes
                    # must still be there when their CPU counters are read.
                    process.stdin.write(_loadgen.SAMPLED)
                    await process.stdin.drain()
                elif line.startswith(_loadgen.RESULT):
                    result = cast(LoadResult, json.loads(line.removeprefix(_loadgen.RESULT)))
                else:
                    output.append(line)
            await process.wait()
    finally:
        await kill(process)
    if process.returncode != 0 or result is None:
        raise RuntimeError(
            f"load generator {' '.join(args)} failed ({process.returncode}):\n"
            + "\n".join(output[-40:])
        )
    return result
