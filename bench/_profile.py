"""Sampling the users service with py-spy, and summing its stacks up by function and package.

py-spy is not a project dependency: `--profile` uses it when it is installed (next to
the interpreter or on PATH) and says so when it is not. Stacks are recorded in
py-spy's raw (collapsed) format: `frame;frame;...;leaf count`, a frame being
`function (path:line)`, with Python frames only; time in C or Cython code is charged
to the Python frame that called it.
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import TypedDict

from tests.support.harness import run

_FRAME = re.compile(r"^(?P<function>.*) \((?P<path>[^():]*)(?::(?P<line>\d+))?\)$")


def find_py_spy() -> str | None:
    beside = Path(sys.executable).with_name("py-spy")
    if beside.exists():
        return str(beside)
    return shutil.which("py-spy")


async def record(py_spy: str, pid: int, duration: float, output: Path, rate: int) -> str:
    """Sample `pid` for `duration` seconds into `output`; py-spy's own last lines."""
    seconds = max(1, round(duration))
    command = [
        py_spy,
        "record",
        "--pid",
        str(pid),
        "--duration",
        str(seconds),
        "--rate",
        str(rate),
        "--format",
        "raw",
        # Reading the stacks without stopping the process disturbs it least.
        "--nonblocking",
        "--output",
        str(output),
    ]
    code, text = await run(command, os.environ, timeout=seconds + 60)
    if code != 0:
        raise RuntimeError(f"py-spy failed ({code}): {text.strip()}")
    return text.strip()


def _split(frame: str) -> tuple[str, str]:
    """(function with its file, package) of one collapsed-stack frame."""
    match = _FRAME.match(frame)
    if match is None:
        return frame, "native" if frame == NATIVE else "?"
    path = match["path"]
    return f"{match['function']} ({path})", _package(path)


def _package(path: str) -> str:
    parts = Path(path).parts
    if not parts:
        return "?"
    if parts[0].startswith(("<frozen", "<string")):
        return "stdlib (frozen)"
    # py-spy prints site-packages and stdlib paths relative to their root, so the
    # first part is the top-level package (or the stdlib module).
    head = parts[0].removesuffix(".py")
    return head.split(".")[0]


NATIVE = "(no Python frame: native code)"
# Time py-spy finds in the event loop's run() itself is native code below it: uvloop's
# loop and grpc's Cython/C-core callbacks (reading, writing, (de)framing calls).
UNDER_THE_LOOP = "native under the loop (uvloop, grpc core)"
# A thread whose only Python frame is Thread.run runs a native target: in a grpc.aio
# process that is grpc's completion-queue poller (`_poll_wrapper`); argon2 hashes run
# under ThreadPoolExecutor frames instead.
THREAD_RUN = "Thread.run (threading.py)"
NATIVE_THREAD = "native thread target (grpc's completion-queue poller)"


def _stacks(lines: Iterable[str]) -> Iterable[tuple[list[str], int]]:
    for line in lines:
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if count.isdigit():
            yield (stack.split(";") if stack.strip() else [NATIVE]), int(count)


def _scaffold(stacks: list[tuple[list[str], int]]) -> set[str]:
    """The frames every stack of the busiest root shares: `<module>` down to the
    event loop's run(). They are on every sample, so they say nothing."""
    by_root: dict[str, int] = collections.Counter()
    for frames, count in stacks:
        by_root[frames[0]] += count
    if not by_root:
        return set()
    root = max(by_root, key=lambda r: by_root[r])
    prefix: list[str] | None = None
    for frames, _ in stacks:
        if frames[0] != root:
            continue
        if prefix is None:
            prefix = frames[:-1]
            continue
        shared = 0
        while shared < min(len(prefix), len(frames)) and prefix[shared] == frames[shared]:
            shared += 1
        prefix = prefix[:shared]
    return {_split(frame)[0] for frame in prefix or []}


class Share(TypedDict):
    name: str
    samples: int
    share: float


class Summary(TypedDict):
    samples: int
    rate_hz: int
    duration_s: float
    # Non-idle samples per possible sample: how many threads ran Python, on average.
    busy_threads: float
    self_by_package: list[Share]
    self_by_function: list[Share]
    inclusive_by_package: list[Share]
    inclusive_by_function: list[Share]
    left_out_of_inclusive: list[str]


def summarise(raw: Path, *, rate: int, duration: float, top: int = 20) -> Summary:
    """Shares of the sampled (non-idle) stacks by leaf function, leaf package, and
    inclusively by function (each function counted once per stack it appears in)."""
    leaf_functions: collections.Counter[str] = collections.Counter()
    leaf_packages: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    inclusive_packages: collections.Counter[str] = collections.Counter()
    total = 0
    with raw.open(encoding="utf-8", errors="replace") as f:
        stacks = list(_stacks(f))
    scaffold = _scaffold(stacks)
    for frames, count in stacks:
        total += count
        split = [_split(frame) for frame in frames]
        function, package = split[-1]
        if function in scaffold:
            function, package = f"{function} = {UNDER_THE_LOOP}", UNDER_THE_LOOP
        elif function == THREAD_RUN:
            function, package = f"{function} = {NATIVE_THREAD}", NATIVE_THREAD
        leaf_functions[function] += count
        leaf_packages[package] += count
        for name in {name for name, _ in split} - scaffold:
            inclusive[name] += count
        for name in {package for _, package in split}:
            inclusive_packages[name] += count

    def shares(counter: collections.Counter[str], n: int) -> list[Share]:
        return [
            {"name": name, "samples": count, "share": count / total if total else 0.0}
            for name, count in counter.most_common(n)
        ]

    return {
        "samples": total,
        "rate_hz": rate,
        "duration_s": duration,
        "busy_threads": total / (rate * duration) if duration else 0.0,
        "self_by_package": shares(leaf_packages, top),
        "self_by_function": shares(leaf_functions, top),
        "inclusive_by_package": shares(inclusive_packages, top),
        "inclusive_by_function": shares(inclusive, top + 10),
        "left_out_of_inclusive": sorted(scaffold),
    }
