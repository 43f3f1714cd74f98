"""Child processes that die with their parent, however the parent dies.

`make run` (deploy/stack.py), the tests and the benchmarks start their servers through
`die_with_parent`: on Linux the child asks the kernel for SIGTERM when its parent dies
(PR_SET_PDEATHSIG), so a supervisor killed with SIGKILL, or a terminal closed under it,
leaves no server serving with no parent. Elsewhere the command runs as it is.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Sequence

__all__ = ["die_with_parent", "stop_with_parent"]

_PR_SET_PDEATHSIG = 1

# Run in the child in place of the command: SIGTERM when the parent dies, unless it is
# already gone, then exec the command (same pid). Not subprocess's preexec_fn: that
# forks the whole multi-threaded parent and runs Python in the copy before exec, which
# the subprocess docs call unsafe with threads (and grpc logs a line per fork).
_GUARD = """\
import ctypes, os, signal, sys
ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
if os.getppid() != int(sys.argv[1]):
    sys.exit(f"{sys.argv[2]}: not started, its parent has gone")
try:
    os.execvp(sys.argv[2], sys.argv[2:])
except OSError as exc:
    sys.stderr.write(f"cannot run {sys.argv[2]}: {exc}\\n")
    sys.exit(127)
"""


def die_with_parent(command: Sequence[str]) -> list[str]:
    """`command`, wrapped so that it gets SIGTERM when this process dies (Linux)."""
    if not sys.platform.startswith("linux"):
        return list(command)
    return [sys.executable, "-I", "-S", "-c", _GUARD, str(os.getpid()), *command]


def stop_with_parent() -> None:
    """Ask for SIGTERM (a graceful stop, once its handler is set) when this process's
    parent dies (Linux): `make run`'s supervisor stops when make is killed."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # it died before the request: no signal will come
        os.kill(os.getpid(), signal.SIGTERM)
