"""Runs a module as `python -m` would, with its memory laid out at random:
`python bench/_layout.py MODULE`.

Where a process's stack and objects land decides which of them share cache sets, and the
same code laid out differently runs at a different speed. Any difference between two
paths' processes (another module imported, a few more environment variables) moves
everything after it: on this machine, the gateway path with metrics on ran 1.02 times as
fast with the tracing SDK merely imported as without it (160 turns, bench/_gwobserve.py),
about as much as tracing was meant to be measured by; laid out at random, 1.00 (160
turns, the median turn 1.01, their geometric mean 0.998). Each path's processes so get a
layout drawn at random (as Stabilizer does, Curtsinger and Berger 2013), and what a
variant costs is averaged over layouts, not tied to the one its imports happen to give:
- the stack: the launcher pads the environment, which sits above the stack, with a
  variable of random length (`LAYOUT_PAD`, `padded_env`);
- the heap: before the module is imported, objects of random sizes and number are
  allocated and kept, so that what the module allocates starts elsewhere in its size
  class's pools.
"""

from __future__ import annotations

import os
import random
import runpy
import sys
from collections.abc import Mapping
from pathlib import Path

LAUNCHER = str(Path(__file__).resolve())
PAD_VARIABLE = "LAYOUT_PAD"
# Up to a page of padding, and up to this many objects kept (each below pymalloc's
# 512-byte limit, so in its pools).
MAX_PAD = 4096
MAX_KEPT = 4096
_random = random.SystemRandom()


def command(module: str) -> list[str]:
    """The command that runs `module` (as `python -m`) with a random layout."""
    return [sys.executable, LAUNCHER, module]


def padded_env(env: Mapping[str, str]) -> dict[str, str]:
    """`env` with the padding variable of a random length."""
    return {**env, PAD_VARIABLE: "x" * _random.randrange(MAX_PAD)}


def _shift_heap() -> list[object]:
    kept: list[object] = []
    for _ in range(_random.randrange(MAX_KEPT)):
        kept.append(b"x" * _random.randrange(2, 470))
    return kept


if __name__ == "__main__":
    _KEPT = _shift_heap()
    module = sys.argv[1]
    del sys.argv[0]  # as `python -m module args`: argv[0] stands for the module
    sys.path[0] = os.getcwd()  # as `python -m`: the working directory, not bench/
    runpy.run_module(module, run_name="__main__", alter_sys=True)
