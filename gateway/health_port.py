"""`GET /healthz` on a port of its own, answered from a thread of its own.

The main port's `/healthz` is answered by the event loop that serves every request: with
a thousand connections sending requests back to back, a new connection first waits in
the kernel's accept queue behind them, then for the loop, and a liveness probe times out
on a process that is working, only busy. This listener (GATEWAY_HEALTH_ADDR) has its own
socket and thread, so a probe is accepted and answered however long the loop's queue is.

It still reports a wedged loop: the loop stamps a heartbeat every `BEAT_SECONDS`, and
the probe is answered 503 once the last beat is older than `stale_after` seconds (a loop
blocked that long serves nobody, and a restart is what it needs). The body says how old
the beat is (`loop_lag_ms`), which shows how busy the loop is.

The thread does little Python per probe (accept, one read, one write, close, on
non-blocking sockets under one selector: no thread per connection), because each time
it waits it gives up the GIL and must win it back from a busy loop thread, a switch
interval (5 ms) at worst. At most `MAX_CONNECTIONS` connections are held at once (more
are closed at once), each for at most `READ_TIMEOUT_SECONDS` to send its request, so a
client holding connections open cannot stop the probes. Anything but `GET /healthz`
gets 404; every answer closes its connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import selectors
import socket
import threading
import time

from servicekit.server import SERVING

log = logging.getLogger("gateway.health")

BEAT_SECONDS = 0.25
MAX_CONNECTIONS = 64
READ_TIMEOUT_SECONDS = 2.0
_MAX_HEAD = 8192


class Heartbeat:
    """A callback on the loop that stamps the time every BEAT_SECONDS."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._last = time.monotonic()
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._beat()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()

    def age(self) -> float:
        """Seconds since the loop last ran the beat (any thread may ask)."""
        return time.monotonic() - self._last

    def _beat(self) -> None:
        self._last = time.monotonic()
        self._handle = self._loop.call_later(BEAT_SECONDS, self._beat)


class HealthPort:
    """Serves GET /healthz on `host:port` from one thread of its own, by `heartbeat`'s age."""

    def __init__(self, host: str, port: int, heartbeat: Heartbeat, *, stale_after: float) -> None:
        self._heartbeat = heartbeat
        self._stale_after = stale_after
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self._socket.listen(128)
        self._socket.setblocking(False)
        self.address = host_port(self._socket.getsockname())
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._socket, selectors.EVENT_READ)
        # Connections accepted and not yet answered: what each sent so far, its deadline.
        self._open: dict[socket.socket, tuple[bytes, float]] = {}
        # Written to by close(), to wake the thread.
        self._wake_r, self._wake_w = socket.socketpair()
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="health-port", daemon=True)

    def start(self) -> None:
        self._thread.start()
        log.info(SERVING, "gateway health", self.address)

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._wake_w.send(b"x")
        self._thread.join(timeout=5)
        for connection in (*self._open, self._socket, self._wake_r, self._wake_w):
            connection.close()
        self._selector.close()

    def _run(self) -> None:
        while True:
            for key, _ in self._selector.select(timeout=READ_TIMEOUT_SECONDS / 4):
                sock = key.fileobj
                if sock is self._socket:
                    self._accept()
                elif isinstance(sock, socket.socket) and sock in self._open:
                    self._read(sock)
            if self._closed:
                return
            now = time.monotonic()
            for sock, (_, deadline) in list(self._open.items()):
                if deadline <= now:
                    self._drop(sock)

    def _accept(self) -> None:
        try:
            connection, _ = self._socket.accept()
        except OSError:
            return  # gone before it was accepted
        if len(self._open) >= MAX_CONNECTIONS:
            connection.close()
            return
        connection.setblocking(False)
        self._open[connection] = (b"", time.monotonic() + READ_TIMEOUT_SECONDS)
        self._selector.register(connection, selectors.EVENT_READ)
        # The request usually came with the connection: answer it now if so.
        self._read(connection)

    def _read(self, connection: socket.socket) -> None:
        head, deadline = self._open[connection]
        try:
            chunk = connection.recv(4096)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        head += chunk
        if not chunk or len(head) > _MAX_HEAD:
            self._drop(connection)
        elif b"\r\n\r\n" in head:
            with contextlib.suppress(OSError):
                # A few hundred bytes: the socket's buffer takes them whole.
                connection.send(self._answer(head))
            self._drop(connection)
        else:
            self._open[connection] = (head, deadline)

    def _drop(self, connection: socket.socket) -> None:
        del self._open[connection]
        self._selector.unregister(connection)
        connection.close()

    def _answer(self, head: bytes) -> bytes:
        method, _, rest = head.partition(b" ")
        path = rest.split(b" ", 1)[0].split(b"?", 1)[0]
        if method != b"GET" or path != b"/healthz":
            return _response(404, {"status": "not found"})
        lag = self._heartbeat.age()
        body = {"status": "ok", "loop_lag_ms": round(lag * 1000)}
        if lag > self._stale_after:
            return _response(503, {**body, "status": "event loop stalled"})
        return _response(200, body)


def host_port(name: tuple[str, int]) -> str:
    """A bound socket's name as `host:port` (`[host]:port` for IPv6)."""
    host, port = name[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


_REASONS = {200: b"OK", 404: b"Not Found", 503: b"Service Unavailable"}


def _response(status: int, body: dict[str, object]) -> bytes:
    payload = json.dumps(body, separators=(",", ":")).encode()
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        b"cache-control: no-store\r\nx-content-type-options: nosniff\r\n"
        b"connection: close\r\n\r\n%s" % (status, _REASONS[status], len(payload), payload)
    )
