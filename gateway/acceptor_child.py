"""The API port's accepting process: run by gateway.acceptor, standard library only.

    python -I -S acceptor_child.py LISTENER CONTROL COUNTER MAX_CONNECTIONS HEADER_TIMEOUT PATHS

LISTENER is the listening socket's descriptor, CONTROL a SOCK_SEQPACKET Unix socket to
the gateway, COUNTER a shared memory file where the gateway counts the connections it
closed; PATHS, comma-separated, are the health checks' paths (never refused). The first
message on CONTROL is the refusal to answer, with `DATE_MARK` and `REQUEST_ID_MARK` in
place of its Date and request id. The process answers `READY` once it accepts, and then:

- below `MAX_CONNECTIONS` (those it handed to the gateway and the gateway has not yet
  closed, handed-but-unread ones included) passes each connection's descriptor to the
  gateway (`HANDED` and how many, SCM_RIGHTS, several per message when several are
  ready; a gateway out of descriptors gets fewer, and counts the others closed) and closes
  its own copy;
- at or past it, holds the connection until its request head has come (at most
  HEADER_TIMEOUT seconds, else closes it), then answers the refusal itself and closes
  it; a health check is passed to the gateway instead, unread (the head is only peeked
  at), where the edge serves it and refuses anything else on that connection.

A client that opens connection after connection past the cap (a flood reconnecting as
soon as it is refused) would keep the process busy with accepts and refusals: past
`FREE_REFUSALS` refusals to one peer address within a second, the next are answered
`REFUSAL_DELAY_SECONDS` late (held meanwhile, unread further). Any other address is still
refused at once, and the flood's reconnects slow to one per connection and second.

It is the gateway's to start and stop: SIGINT and SIGTERM (a terminal's Ctrl-C, a group
kill) are ignored, it exits once CONTROL reaches its end (the gateway closed it, or
died), and on Linux the kernel kills it when the gateway's thread that started it dies.
Its warnings go to the gateway (`LOG`), which logs them as its own.
"""

from __future__ import annotations

import collections
import contextlib
import mmap
import os
import selectors
import signal
import socket
import sys
import time

# Refusals per peer address and second answered at once; the next wait this long.
FREE_REFUSALS = 16
REFUSAL_DELAY_SECONDS = 1.0
# Placeholders in the refusal, as long as what replaces them.
DATE_MARK = b"Ddd, DD Mmm YYYY HH:MM:SS GMT"
REQUEST_ID_MARK = b"request-id-request-id-request-id-xxx"
# First byte of the messages to the gateway.
READY = b"R"
HANDED = b"H"
# The memory shared with the gateway: two counters of 8 bytes (see Acceptor).
COUNTS_BYTES = 16
LOG = b"L"
# Accepted in a row, at most, before the process looks at the connections it holds; also
# the most descriptors in one message (Linux takes 253; the count is one byte).
BATCH = 64
# After accepting failed (out of descriptors, say), the listener rests this long: a
# listener still readable would be retried at once, again and again.
REST_SECONDS = 0.1
_MAX_HEAD = 64 * 1024
_PR_SET_PDEATHSIG = 1
_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


class Acceptor:
    def __init__(
        self,
        listener: socket.socket,
        control: socket.socket,
        counts: memoryview,
        *,
        max_connections: int,
        header_timeout: float,
        uncapped: frozenset[bytes],
        refusal: bytes,
    ) -> None:
        """`counts[0]` is the count of handed connections the gateway has closed;
        `counts[1]`, of the connections refused here, is this process's to keep."""
        self._listener = listener
        self._listener.setblocking(False)
        self._control = control
        self._control.setblocking(False)
        self._counts = counts
        self._max_connections = max_connections
        self._header_timeout = header_timeout
        self._uncapped = uncapped
        self._refusal = refusal
        self._date = (0, DATE_MARK)  # the second it is for, and the header's value
        # Passed to the gateway, and those still to pass (the control socket was full).
        self._handed = 0
        self._outbox: list[socket.socket] = []
        self._writing = False  # waiting for room on the control socket
        self._resting_until = 0.0  # the listener's rest, if it rests
        # Connections past the cap, waiting for their request head: their peer address;
        # and when each must have sent it, in that order (those no longer held are
        # skipped as they come up): no scan of all of them, thousands in a flood.
        self._held: dict[socket.socket, str] = {}
        self._deadlines: collections.deque[tuple[float, socket.socket]] = collections.deque()
        # Refusals held back, in the order (and so the time) they are due.
        self._late: collections.deque[tuple[float, socket.socket]] = collections.deque()
        # Refusals per peer address in the current second, from when.
        self._refused: dict[str, int] = {}
        self._second = 0.0
        self._selector = selectors.DefaultSelector()
        self._selector.register(listener, selectors.EVENT_READ)
        self._selector.register(control, selectors.EVENT_READ)

    def run(self) -> None:
        """Accept until the gateway closes the control socket."""
        self._control.send(READY)
        while True:
            for key, events in self._selector.select(timeout=self._timeout()):
                sock = key.fileobj
                if sock is self._listener:
                    self._accept()
                elif sock is self._control:
                    if events & selectors.EVENT_READ and not self._gateway_there():
                        return
                    if events & selectors.EVENT_WRITE:
                        self._send()
                elif isinstance(sock, socket.socket) and sock in self._held:
                    self._look(sock)
            if self._outbox and not self._writing:  # the last send failed otherwise
                self._send()
            self._timed(time.monotonic())

    def _timeout(self) -> float:
        """How long to wait for events: until the next late refusal or the listener's
        rest's end, at most 0.25 s (the head deadlines' granularity)."""
        due = [self._late[0][0]] if self._late else []
        if self._resting_until:
            due.append(self._resting_until)
        return max(0.0, min([0.25, *(when - time.monotonic() for when in due)]))

    def _timed(self, now: float) -> None:
        """What is due by `now`: heads that did not come, late refusals, the listener."""
        while self._deadlines and self._deadlines[0][0] <= now:
            sock = self._deadlines.popleft()[1]
            if sock in self._held:
                self._drop(sock)
        while self._late and self._late[0][0] <= now:
            self._refuse(self._late.popleft()[1])
        if self._resting_until and self._resting_until <= now:
            self._resting_until = 0.0
            self._selector.register(self._listener, selectors.EVENT_READ)

    def _accept(self) -> None:
        for _ in range(BATCH):
            try:
                connection, peer = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                break
            except OSError as exc:  # out of descriptors, say
                self.warn(f"accepting a connection failed: {exc}; again in {REST_SECONDS:g} s")
                self._resting_until = time.monotonic() + REST_SECONDS
                self._selector.unregister(self._listener)
                break
            if self._handed - self._counts[0] < self._max_connections:
                self._hand_over(connection)
            else:
                connection.setblocking(False)
                self._held[connection] = str(peer[0]) if isinstance(peer, tuple) else ""
                self._deadlines.append((time.monotonic() + self._header_timeout, connection))
                self._selector.register(connection, selectors.EVENT_READ)
                self._look(connection)  # the request often came with the connection
        self._send()

    def _look(self, connection: socket.socket) -> None:
        """Refuse a held connection's request once its head is in, or pass a health check
        to the gateway."""
        try:
            seen = connection.recv(_MAX_HEAD, socket.MSG_PEEK)
        except BlockingIOError:
            return
        except OSError:
            seen = b""
        if not seen:  # the client went away
            self._drop(connection)
            return
        end = seen.find(b"\r\n\r\n")
        if end < 0 and len(seen) < _MAX_HEAD:
            return  # not all of the head yet
        target = seen.split(b" ", 2)[1] if seen.count(b" ", 0, end) >= 2 else b""
        if target.split(b"?", 1)[0] in self._uncapped:
            self._unhold(connection)
            self._hand_over(connection)
            self._send()
            return
        with contextlib.suppress(OSError):
            connection.recv(len(seen))  # read, so that closing does not reset it
        address = self._held[connection]
        self._unhold(connection)
        if self._count_refusal(address) > FREE_REFUSALS:
            self._late.append((time.monotonic() + REFUSAL_DELAY_SECONDS, connection))
        else:
            self._refuse(connection)

    def _count_refusal(self, address: str) -> int:
        """Refusals to `address` in the current second, this one included."""
        now = time.monotonic()
        if now - self._second >= 1.0:
            self._second = now
            self._refused.clear()
        count = self._refused.get(address, 0) + 1
        self._refused[address] = count
        return count

    def _refuse(self, connection: socket.socket) -> None:
        answer = self._refusal.replace(DATE_MARK, self._date_now()).replace(
            REQUEST_ID_MARK, request_id()
        )
        self._counts[1] += 1  # before the answer: who has it may read the count
        with contextlib.suppress(OSError):
            connection.send(answer)
        connection.close()

    def _date_now(self) -> bytes:
        second = int(time.time())
        if self._date[0] != second:
            self._date = (second, http_date(second))
        return self._date[1]

    def _hand_over(self, connection: socket.socket) -> None:
        self._handed += 1
        self._outbox.append(connection)

    def _send(self) -> None:
        """Pass the connections in the outbox to the gateway, as far as it takes them."""
        while self._outbox:
            batch = self._outbox[:BATCH]
            try:
                fds = [c.fileno() for c in batch]
                socket.send_fds(self._control, [HANDED + bytes([len(fds)])], fds)
            except BlockingIOError:  # the gateway is behind: once it reads
                self._want_write(True)
                return
            except OSError:  # gone (its end comes next), or too many descriptors in flight
                self._want_write(False)  # again on the next round
                return
            for connection in batch:
                connection.close()
            del self._outbox[: len(batch)]
        self._want_write(False)

    def _want_write(self, writing: bool) -> None:
        if writing != self._writing:
            self._writing = writing
            events = selectors.EVENT_READ | (selectors.EVENT_WRITE if writing else 0)
            self._selector.modify(self._control, events)

    def _gateway_there(self) -> bool:
        """Read the control socket: False once the gateway has closed it."""
        try:
            return bool(self._control.recv(1))
        except BlockingIOError:
            return True
        except OSError:
            return False

    def warn(self, message: str) -> None:
        with contextlib.suppress(OSError):
            self._control.send(LOG + message.encode(errors="replace"))

    def _unhold(self, connection: socket.socket) -> None:
        del self._held[connection]
        self._selector.unregister(connection)

    def _drop(self, connection: socket.socket) -> None:
        self._unhold(connection)
        connection.close()


def http_date(seconds: float) -> bytes:
    """An HTTP Date, as email.utils.formatdate(usegmt=True) writes it (as uvicorn's)."""
    t = time.gmtime(seconds)
    return (
        f"{_DAYS[t.tm_wday]}, {t.tm_mday:02d} {_MONTHS[t.tm_mon - 1]} {t.tm_year:04d} "
        f"{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d} GMT"
    ).encode()


def request_id() -> bytes:
    """A random (version 4) UUID, as str(uuid.uuid4()) writes it; without importing uuid
    (platform, re, enum: 7 ms of start-up)."""
    raw = bytearray(os.urandom(16))
    raw[6] = raw[6] & 0x0F | 0x40
    raw[8] = raw[8] & 0x3F | 0x80
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}".encode()


def _die_with_parent() -> None:
    """SIGKILL when the thread that started this process ends (Linux); as
    servicekit.children, which this process cannot import."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes  # noqa: PLC0415 - Linux only

    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def main(argv: list[str]) -> int:
    listener_fd, control_fd, counter_fd = (int(arg) for arg in argv[:3])
    max_connections, header_timeout, paths = int(argv[3]), float(argv[4]), argv[5]
    parent = os.getppid()
    _die_with_parent()
    if os.getppid() != parent:  # it died before the request: no signal will come
        return 1
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    control = socket.socket(fileno=control_fd)
    refusal = control.recv(_MAX_HEAD)
    if not refusal:
        return 1
    with mmap.mmap(counter_fd, COUNTS_BYTES) as shared:
        os.close(counter_fd)
        counts = memoryview(shared).cast("Q")
        acceptor = Acceptor(
            socket.socket(fileno=listener_fd),
            control,
            counts,
            max_connections=max_connections,
            header_timeout=header_timeout,
            uncapped=frozenset(path.encode() for path in paths.split(",") if path),
            refusal=refusal,
        )
        try:
            acceptor.run()
        finally:
            counts.release()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
