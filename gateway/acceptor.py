"""The API port's connections, accepted by a process of their own.

With the event loop busy (a thousand connections sending requests back to back), a new
connection waits in the kernel's accept queue until the loop gets round to accepting it,
then for the loop again to read its request: a client past the connection cap waited
seconds for its 503 (`make bench-abuse`), though refusing it is no work at all. A thread
of the gateway's own did not do: each of its socket calls gives up the GIL, and winning
it back from the busy loop thread took a switch interval (5 ms) each time, several per
connection, with the gateway's full garbage collections (50-120 ms) on top; refused
clients still waited 0.9 s at p99, hundreds of connections queued in the kernel meanwhile.

So the listening socket is a small child process's (gateway.acceptor_child, standard
library only: it starts in about 15 ms and holds about 11 MiB), which shares no GIL and
no heap with the gateway. It accepts at once, and

- below `max_connections` (the gateway's connections, counting those on their way to
  it) passes the connection's descriptor to the gateway over a Unix socket (SCM_RIGHTS,
  several per message when several are ready): `AcceptorProcess` reads them on the loop
  and `adopt`s each, which serves it as uvicorn would (`loop.connect_accepted_socket`
  with gateway.edge's protocol);
- at or past it, answers 503 `TOO_MANY_CONNECTIONS` itself once the request head has
  come, and closes the connection, never touching the gateway (health checks excepted:
  their connections are passed on unread), slowing its refusals to an address that keeps
  reconnecting; gateway.acceptor_child says how.

The child counts the connections it passed; the gateway counts those it closed
(`connection_closed`, once per passed connection) in shared memory the child reads, so
the difference is the gateway's open connections plus those still on their way, with no
message per close; the child counts its refusals there too (`refused`), which the
gateway adds to its metrics. The refusal is the edge's own (`refusal`), made here once
with marks where the child writes the Date and the request id.

What it costs per new connection below the cap: its descriptor's passing, about 2 us in
the child and 3 us on the loop (0.2 and 0.7 us a connection when 64 go in one message);
kept-alive connections pay nothing. In `make bench-abuse`'s flood the child used 0.03
cores and 14 MiB, holding 2,000 connections past the cap, and refused probes waited
8-23 ms at p99 (two runs; the slower had the machine's two cores 1.85 busy).

The child is the gateway's to stop (`stop`: it stops accepting and closes the port once
the control socket closes) and dies with it: the control socket's end, and on Linux the
kernel's signal when the thread that started it (the loop's) ends, SIGKILL included.
If it goes away on its own, nothing accepts any more: `on_gone` is told.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import mmap
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from gateway import acceptor_child
from gateway.acceptor_child import BATCH, COUNTS_BYTES, HANDED, LOG, READY

log = logging.getLogger("gateway.acceptor")

# How long the child may take to start accepting, and to exit once told.
START_SECONDS = 10.0
STOP_SECONDS = 5.0
_CHILD = str(Path(acceptor_child.__file__).resolve())


class AcceptorError(Exception):
    """The accepting process could not be started."""


class AcceptorProcess:
    """The accepting process for `listener` (which it takes over), and its connections,
    `adopt`ed on `loop`."""

    def __init__(
        self,
        listener: socket.socket,
        loop: asyncio.AbstractEventLoop,
        adopt: Callable[[socket.socket], None],
        *,
        max_connections: int,
        header_timeout: float,
        uncapped: frozenset[str],
        refusal: bytes,
        on_gone: Callable[[], None],
    ) -> None:
        self._listener = listener
        self._kind = (listener.family, listener.type, listener.proto)
        self._loop = loop
        self._adopt = adopt
        self._max_connections = max_connections
        self._header_timeout = header_timeout
        self._uncapped = uncapped
        self._refusal = refusal
        self._on_gone = on_gone
        self._control, self._child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._control.setblocking(False)
        self._counter_file, self._shared = _shared_counter()
        # [0]: connections closed here, [1]: connections the child refused.
        self._counts = memoryview(self._shared).cast("Q")
        self._closed = 0
        self._process: subprocess.Popen[bytes] | None = None
        self._stopping = False

    async def start(self) -> None:
        """Start the child, and return once it accepts; AcceptorError if it does not."""
        inherited = (self._listener.fileno(), self._child_end.fileno(), self._counter_file)
        command = [
            sys.executable,
            "-I",
            "-S",
            _CHILD,
            *(str(fd) for fd in inherited),
            str(self._max_connections),
            repr(self._header_timeout),
            ",".join(sorted(self._uncapped)),
        ]
        try:
            # On the loop's thread (not asyncio's subprocess, nor a thread of its own):
            # the child dies when the thread that started it ends. A fork and exec, ~1 ms.
            self._process = subprocess.Popen(  # noqa: ASYNC220, S603 - our own command
                command, pass_fds=inherited, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL
            )
        except OSError as exc:
            raise AcceptorError(f"cannot start the accepting process: {exc}") from exc
        finally:  # the child's now, or no one's
            self._listener.close()
            self._child_end.close()
            os.close(self._counter_file)
        try:
            self._control.send(self._refusal)
            first = await asyncio.wait_for(self._loop.sock_recv(self._control, 64), START_SECONDS)
        except (TimeoutError, OSError) as exc:
            await self.stop()
            raise AcceptorError(f"the accepting process did not start: {exc!r}") from exc
        if first != READY:
            await self.stop()
            raise AcceptorError("the accepting process exited at start-up")
        self._loop.add_reader(self._control.fileno(), self._receive)

    @property
    def refused(self) -> int:
        """How many connections past the cap the child has refused so far."""
        return 0 if self._stopping else int(self._counts[1])

    def connection_closed(self) -> None:
        """Count one of the connections passed to `adopt` as closed (once each)."""
        if not self._stopping:  # else the child has gone, and the count with it
            self._closed += 1
            self._counts[0] = self._closed

    async def stop(self) -> None:
        """Stop accepting: the child exits, closing the port, and this returns."""
        self._stopping = True
        with contextlib.suppress(ValueError, OSError):  # not reading yet, or closed
            self._loop.remove_reader(self._control.fileno())
        self._control.close()
        if self._process is not None:
            await asyncio.to_thread(_end, self._process)
        self._counts.release()
        self._shared.close()

    @property
    def pid(self) -> int | None:
        return None if self._process is None else self._process.pid

    def _receive(self) -> None:
        while True:
            try:
                message, fds, flags, _ = socket.recv_fds(self._control, 65536, BATCH)
            except BlockingIOError:
                return
            except OSError:
                message, fds, flags = b"", [], 0
            if not message:
                self._gone()
                return
            kind = message[:1]
            if kind == HANDED:
                for fd in fds:
                    self._adopt(socket.socket(*self._kind, fileno=fd))
                self._lost(message[1] - len(fds) if len(message) > 1 else 0, flags)
                continue
            for fd in fds:
                os.close(fd)
            if kind == LOG:
                log.warning("%s", message[1:].decode(errors="replace"))

    def _lost(self, count: int, flags: int) -> None:
        """Count `count` connections passed but not received as closed: without a
        descriptor to spare, the kernel closes what does not fit."""
        if count > 0 or flags & socket.MSG_CTRUNC:
            log.error("%d connections were lost on their way here: out of descriptors?", count)
        for _ in range(count):
            self.connection_closed()

    def _gone(self) -> None:
        self._loop.remove_reader(self._control.fileno())
        if not self._stopping:
            code = None if self._process is None else self._process.poll()
            log.error("the accepting process has gone (exit status %s): accepting no more", code)
            self._on_gone()


def _shared_counter() -> tuple[int, mmap.mmap]:
    """A file of the two counters shared with the child (memory only, where there is
    memfd), and its mapping here."""
    if hasattr(os, "memfd_create"):
        fd = os.memfd_create("gateway-connections-closed", os.MFD_CLOEXEC)
    else:
        with tempfile.TemporaryFile() as file:
            fd = os.dup(file.fileno())
    os.ftruncate(fd, COUNTS_BYTES)
    return fd, mmap.mmap(fd, COUNTS_BYTES)


def _end(process: subprocess.Popen[bytes]) -> None:
    try:
        process.wait(STOP_SECONDS)
    except subprocess.TimeoutExpired:
        log.error("the accepting process did not exit within %gs; killing it", STOP_SECONDS)
        process.kill()
        process.wait()
