"""The API port's connections, accepted on a thread of its own.

With the event loop busy (a thousand connections sending requests back to back), a new
connection waits in the kernel's accept queue until the loop gets round to accepting it,
then for the loop again to read its request: a client past the connection cap waited
seconds for its 503 (`make bench-abuse`), though refusing it is no work at all. So the
listening socket is the `Acceptor`'s: one thread, with a selector, that accepts at once,
and

- below `max_connections` (the loop's connections and those on their way to it) hands
  the connection to the loop, which serves it as uvicorn would have
  (`loop.connect_accepted_socket` with gateway.edge's protocol);
- at or past it, holds the connection until its request head has come (at most
  `header_timeout` seconds, else closes it), then answers 503 `TOO_MANY_CONNECTIONS`
  itself and closes it, never touching the loop; a health check (`/healthz`, `/readyz`)
  is handed to the loop instead, unread (the head is only peeked at), where the edge
  serves it and refuses anything else on that connection.

A client that opens connection after connection past the cap (a flood reconnecting as
soon as it is refused) would keep the thread busy with accepts and refusals: past
`FREE_REFUSALS` refusals to one peer address within a second, the next are answered
`REFUSAL_DELAY_SECONDS` late (held meanwhile, unread further). Any other address is still
refused at once, and the flood's reconnects slow to one per connection and second.

The thread does little per connection (accept, a peek, a send, a close) and gives up the
GIL whenever it waits, so a busy loop delays it by a switch interval (5 ms) at most.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import selectors
import socket
import threading
import time
from collections.abc import Callable

from gateway.edge import TOO_MANY_CONNECTIONS, UNCAPPED_PATHS, refusal

log = logging.getLogger("gateway.acceptor")

# Refusals per peer address and second answered at once; the next wait this long.
FREE_REFUSALS = 16
REFUSAL_DELAY_SECONDS = 1.0
# Accepted in a row, at most, before the thread looks at the connections it holds.
_BATCH = 64
_MAX_HEAD = 64 * 1024
_UNCAPPED = frozenset(path.encode() for path in UNCAPPED_PATHS)


class Acceptor:
    def __init__(
        self,
        listener: socket.socket,
        loop: asyncio.AbstractEventLoop,
        adopt: Callable[[socket.socket], None],
        *,
        open_connections: Callable[[], int],
        max_connections: int,
        header_timeout: float,
        default_headers: Callable[[], list[tuple[bytes, bytes]]],
    ) -> None:
        """`adopt` serves a connection on `loop` (called there); `open_connections`, how
        many the loop has; `default_headers`, uvicorn's (its Date) for the refusals."""
        self._listener = listener
        self._listener.setblocking(False)
        self._loop = loop
        self._adopt = adopt
        self._open_connections = open_connections
        self._max_connections = max_connections
        self._header_timeout = header_timeout
        self._default_headers = default_headers
        # Handed to the loop (this thread counts) and adopted there (the loop counts).
        self._handed = 0
        self._adopted = 0
        # Connections past the cap, waiting for their request head: their deadline and
        # peer address.
        self._held: dict[socket.socket, tuple[float, str]] = {}
        # Refusals held back, in the order (and so the time) they are due.
        self._late: collections.deque[tuple[float, socket.socket]] = collections.deque()
        # Refusals per peer address in the current second, from when.
        self._refused: dict[str, int] = {}
        self._second = 0.0
        self._selector = selectors.DefaultSelector()
        self._selector.register(listener, selectors.EVENT_READ)
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="acceptor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def close(self) -> None:
        """Stop accepting (the listening socket closes); held connections are closed."""
        self._closed = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        self._thread.join(timeout=5)
        late = (sock for _, sock in self._late)
        for sock in (*self._held, *late, self._listener, self._wake_r, self._wake_w):
            sock.close()
        self._selector.close()

    # On the thread

    def _run(self) -> None:
        while True:
            timeout = 0.25
            if self._late:
                timeout = max(0.0, min(timeout, self._late[0][0] - time.monotonic()))
            for key, _ in self._selector.select(timeout=timeout):
                sock = key.fileobj
                if sock is self._listener:
                    self._accept()
                elif isinstance(sock, socket.socket) and sock in self._held:
                    self._look(sock)
            if self._closed:
                return
            now = time.monotonic()
            for sock, (deadline, _) in list(self._held.items()):
                if deadline <= now:
                    self._drop(sock)
            while self._late and self._late[0][0] <= now:
                self._refuse(self._late.popleft()[1])

    def _accept(self) -> None:
        for _ in range(_BATCH):
            try:
                connection, peer = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of descriptors, say: the next select tries again
                log.warning("accepting a connection failed: %s", exc)
                return
            connection.setblocking(False)
            pending = self._handed - self._adopted
            if self._open_connections() + pending < self._max_connections:
                self._hand_over(connection)
            else:
                address = str(peer[0]) if isinstance(peer, tuple) else ""
                self._held[connection] = (time.monotonic() + self._header_timeout, address)
                self._selector.register(connection, selectors.EVENT_READ)
                self._look(connection)  # the request often came with the connection

    def _look(self, connection: socket.socket) -> None:
        """Refuse a held connection's request once its head is in, or hand a health check
        over to the loop."""
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
        if target.split(b"?", 1)[0] in _UNCAPPED:
            self._unhold(connection)
            self._hand_over(connection)
            return
        with contextlib.suppress(OSError):
            connection.recv(len(seen))  # read, so that closing does not reset it
        address = self._held[connection][1]
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
        with contextlib.suppress(OSError):
            connection.send(refusal(TOO_MANY_CONNECTIONS, self._default_headers()))
        connection.close()

    def _hand_over(self, connection: socket.socket) -> None:
        self._handed += 1
        try:
            self._loop.call_soon_threadsafe(self._adopted_by_loop, connection)
        except RuntimeError:  # the loop is closed: shutting down
            connection.close()

    def _unhold(self, connection: socket.socket) -> None:
        del self._held[connection]
        self._selector.unregister(connection)

    def _drop(self, connection: socket.socket) -> None:
        self._unhold(connection)
        connection.close()

    # On the loop

    def _adopted_by_loop(self, connection: socket.socket) -> None:
        self._adopted += 1
        self._adopt(connection)
