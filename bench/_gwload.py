"""Load for the gateway benchmark: one wrk run, and the CPU every process used meanwhile.

wrk (the Debian package) drives HTTP/1.1 keep-alive connections in a closed loop from a
process of its own. Its Lua script (written next to the plan file) pre-builds one request
per sampled user id, each with the bearer token, picks one at random for every request,
and prints its summary as one JSON line from `done()`; the text report (`--latency`) is
parsed too, and its "Non-2xx or 3xx responses" line must agree with the JSON.

While wrk runs, CPU time is read from /proc for each server's processes, for the
PostgreSQL backends of the run's database and for the whole machine; wrk's own comes from
this process's reaped-children usage. What is left of the machine's busy time is other
people's work: noise.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import resource
import shutil
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict

import _procs
import asyncpg

from tests.support.harness import child_env, run

WRK_THREADS = 2
# Long enough that a slow request shows in the latency figures instead of being dropped
# as a timeout (wrk's default is 2 s).
WRK_TIMEOUT = "10s"
BACKEND_POLL_S = 0.5

LUA = r"""
-- Written by bench/_gwload.py. Args: plan file (line 1 the token, then one id per
-- line), random seed.
local requests = {}
local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("thread_number", threads)
end

function init(args)
  local lines = io.lines(args[1])
  local token = lines()
  local headers = {["Authorization"] = "Bearer " .. token}
  for id in lines do
    if #id > 0 then
      requests[#requests + 1] = wrk.format("GET", "/v1/users/" .. id, headers)
    end
  end
  math.randomseed(tonumber(args[2]) + (thread_number or 0) * 7919)
end

function request()
  return requests[math.random(#requests)]
end

function done(summary, latency, per_thread)
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"min": %d, "mean": %.1f, "stdev": %.1f, "max": %d, ' ..
    '"p50": %d, "p90": %d, "p99": %d, "p99.9": %d}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency.min, latency.mean, latency.stdev, latency.max,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9)))
end
"""

_NON_2XX = re.compile(r"Non-2xx or 3xx responses:\s+(\d+)")
_SOCKET_ERRORS = re.compile(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)")


def find_wrk() -> str | None:
    return shutil.which("wrk")


WRK_MISSING = (
    "wrk is not installed: it is the load generator of this benchmark (Debian package "
    "`wrk`: `sudo apt-get install -y wrk`; on macOS `brew install wrk`)"
)


def write_plan(workdir: Path, token: str, ids: Sequence[str]) -> tuple[Path, Path]:
    """The Lua script and the plan it reads; their paths."""
    script = workdir / "get_user.lua"
    plan = workdir / "plan.txt"
    script.write_text(LUA)
    plan.write_text("\n".join([token, *ids]) + "\n")
    return script, plan


@dataclass
class Target:
    """What one load phase aims at, and whose CPU is its own."""

    name: str
    url: str
    own: Sequence[str]  # the pid groups that serve it


class Meter:
    """Reads the CPU counters of the run's processes and PostgreSQL backends."""

    def __init__(self, admin_dsn: str, database: str) -> None:
        self._admin_dsn = admin_dsn
        self._database = database
        self._watch: asyncpg.Connection | None = None

    async def open(self) -> None:
        self._watch = await asyncpg.connect(self._admin_dsn, timeout=5)

    async def close(self) -> None:
        if self._watch is not None:
            await self._watch.close()

    async def backends(self) -> list[int]:
        assert self._watch is not None
        rows = await self._watch.fetch(
            "SELECT pid FROM pg_stat_activity WHERE datname = $1", self._database
        )
        return [int(r["pid"]) for r in rows]


class WrkFigures(TypedDict):
    """What wrk measured in one run."""

    requests: int
    requests_per_s: float
    p50_ms: float
    p90_ms: float
    p99_ms: float
    p999_ms: float
    max_ms: float
    mean_ms: float
    non_2xx: int
    socket_errors: dict[str, int]
    socket_errors_line: str | None
    bytes: int
    wrk_output: str


class WrkCpu(TypedDict):
    """Cores each part used in the window, and the serving processes' µs per request."""

    window_s: float
    # By pid group (each server), then postgres, wrk, harness and other (noise).
    cores: dict[str, float]
    machine_busy_cores: float
    postgres_backends: int
    serving_cores: float
    serving_us_per_request: float | None
    postgres_us_per_request: float | None
    by_group_us_per_request: dict[str, float | None]


class WrkResult(WrkFigures):
    target: str
    connections: int
    duration_s: int
    # None unless the run was measured (given the pid groups and a meter).
    cpu: WrkCpu | None


def errors(result: WrkFigures) -> int:
    """Non-2xx responses and socket errors."""
    return result["non_2xx"] + sum(result["socket_errors"].values())


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def run_wrk(
    wrk: str,
    target: Target,
    *,
    script: Path,
    plan: Path,
    connections: int,
    duration_s: int,
    seed: int,
    groups: Mapping[str, Sequence[int]] | None = None,
    meter: Meter | None = None,
) -> WrkResult:
    """One wrk run against `target`; with `groups` and `meter`, the CPU split as well."""
    command = [
        wrk,
        f"-t{min(WRK_THREADS, connections)}",
        f"-c{connections}",
        f"-d{duration_s}s",
        f"--timeout={WRK_TIMEOUT}",
        "--latency",
        "-s",
        str(script),
        f"{target.url}/v1/users/",
        "--",
        str(plan),
        str(seed),
    ]
    pids = [pid for group in (groups or {}).values() for pid in group]
    # The last reading of each backend seen in the window: one that goes away keeps it.
    seen: dict[int, float] = {}
    stop_watching = asyncio.Event()

    async def watch() -> None:
        assert meter is not None
        while not stop_watching.is_set():
            for pid in await meter.backends():
                seen[pid] = max(seen.get(pid, 0.0), _procs.process_cpu_s(pid))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop_watching.wait(), BACKEND_POLL_S)

    backends = await meter.backends() if meter is not None else []
    start = _procs.cpu_sample([*pids, *backends])
    children_before, own_before = _children_cpu_s(), _own_cpu_s()
    started = time.perf_counter()
    watcher = asyncio.create_task(watch()) if meter is not None else None
    try:
        code, text = await run(command, child_env(), timeout=duration_s + 60)
    finally:
        stop_watching.set()
        if watcher is not None:
            await watcher
    window = time.perf_counter() - started
    backends_after = await meter.backends() if meter is not None else []
    stop = _procs.cpu_sample([*pids, *backends, *backends_after, *seen])
    wrk_cpu = _children_cpu_s() - children_before
    harness_cpu = _own_cpu_s() - own_before

    if code != 0:
        raise RuntimeError(f"wrk failed ({code}):\n{text}")
    result: WrkResult = {
        **_parse(text),
        "target": target.name,
        "connections": connections,
        "duration_s": duration_s,
        "cpu": None,
    }
    if groups is not None:
        for pid, cpu in seen.items():
            stop.by_pid[pid] = max(stop.by_pid.get(pid, 0.0), cpu)
        result["cpu"] = _cpu_split(
            start,
            stop,
            groups,
            own=target.own,
            wrk_s=wrk_cpu,
            harness_s=harness_cpu,
            window_s=window,
            requests=result["requests"],
        )
    return result


def _parse(text: str) -> WrkFigures:
    line = next((ln for ln in text.splitlines() if ln.startswith("WRK_JSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk printed no summary:\n{text}")
    summary = json.loads(line[len("WRK_JSON ") :])
    non_2xx = _NON_2XX.search(text)
    text_non_2xx = int(non_2xx.group(1)) if non_2xx else 0
    errors = summary["errors"]
    if text_non_2xx != errors["status"]:
        raise RuntimeError(f"wrk's text and JSON disagree on non-2xx responses:\n{text}")
    sockets = _SOCKET_ERRORS.search(text)
    latency = summary["latency_us"]
    seconds = summary["duration_us"] / 1e6
    return {
        "requests": summary["requests"],
        "requests_per_s": summary["requests"] / seconds if seconds else 0.0,
        "p50_ms": latency["p50"] / 1000,
        "p90_ms": latency["p90"] / 1000,
        "p99_ms": latency["p99"] / 1000,
        "p999_ms": latency["p99.9"] / 1000,
        "max_ms": latency["max"] / 1000,
        "mean_ms": latency["mean"] / 1000,
        "non_2xx": errors["status"],
        "socket_errors": {k: v for k, v in errors.items() if k != "status"},
        "socket_errors_line": sockets.group(0) if sockets else None,
        "bytes": summary["bytes"],
        "wrk_output": text,
    }


def _cpu_split(
    start: _procs.CpuSample,
    stop: _procs.CpuSample,
    groups: Mapping[str, Sequence[int]],
    *,
    own: Sequence[str],
    wrk_s: float,
    harness_s: float,
    window_s: float,
    requests: int,
) -> WrkCpu:
    """Cores each part used in the window, and the serving processes' µs per request."""
    used = {pid: max(0.0, s - start.by_pid.get(pid, 0.0)) for pid, s in stop.by_pid.items()}
    cores: dict[str, float] = {}
    accounted = 0.0
    for name, pids in groups.items():
        seconds = sum(used.pop(pid, 0.0) for pid in pids)
        cores[name] = seconds / window_s
        accounted += seconds
    postgres = sum(used.values())
    busy = stop.busy - start.busy
    accounted += postgres + wrk_s + harness_s
    cores.update(
        postgres=postgres / window_s,
        wrk=wrk_s / window_s,
        harness=harness_s / window_s,
        # What ran besides this benchmark: other people's work, i.e. noise.
        other=max(0.0, busy - accounted) / window_s,
    )
    serving = sum(cores[name] for name in own) * window_s
    return {
        "window_s": window_s,
        "cores": cores,
        "machine_busy_cores": busy / window_s,
        "postgres_backends": len(used),
        "serving_cores": serving / window_s,
        "serving_us_per_request": serving / requests * 1e6 if requests else None,
        "postgres_us_per_request": postgres / requests * 1e6 if requests else None,
        "by_group_us_per_request": {
            name: cores[name] * window_s / requests * 1e6 if requests else None for name in own
        },
    }


def wrk_version(wrk: str) -> str:
    """wrk's version (it prints it with its usage, exiting 1)."""
    completed = subprocess.run(
        [wrk, "--version"], capture_output=True, text=True, check=False, timeout=10
    )
    first = (completed.stdout or completed.stderr).splitlines()
    # "wrk debian/4.1.0-3+b2 [epoll] Copyright (C) 2012 Will Glozer"
    return " ".join(first[0].split()[1:3]) if first else "?"
