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

The thread does little Python per probe (accept, one read, one write, close), because
each blocking call gives up the GIL and must win it back from a busy loop thread: a few
switch intervals (5 ms each). Connections are served each on a short-lived thread, at
most `MAX_CONNECTIONS` at once (more are closed at once), each read bounded by
`READ_TIMEOUT_SECONDS`, so a client holding connections open cannot stop the probes.
Anything but `GET /healthz` gets 404; every answer closes its connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import threading
import time

from servicekit.server import SERVING

log = logging.getLogger("gateway.health")

BEAT_SECONDS = 0.25
MAX_CONNECTIONS = 16
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
    """Serves GET /healthz on `host:port` from its own threads, by `heartbeat`'s age."""

    def __init__(self, host: str, port: int, heartbeat: Heartbeat, *, stale_after: float) -> None:
        self._heartbeat = heartbeat
        self._stale_after = stale_after
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._socket.bind((host, port))
        self._socket.listen(128)
        bound_host, bound_port = self._socket.getsockname()[:2]
        self.address = (
            f"[{bound_host}]:{bound_port}" if ":" in bound_host else (f"{bound_host}:{bound_port}")
        )
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._accept, name="health-port", daemon=True)

    def start(self) -> None:
        self._thread.start()
        log.info(SERVING, "gateway health", self.address)

    def close(self) -> None:
        self._closed.set()
        # shutdown() wakes the thread blocked in accept(); close() alone may not.
        with contextlib.suppress(OSError):
            self._socket.shutdown(socket.SHUT_RDWR)
        self._socket.close()
        self._thread.join(timeout=5)

    def _accept(self) -> None:
        while not self._closed.is_set():
            try:
                connection, _ = self._socket.accept()
            except OSError:
                if self._closed.is_set():
                    return
                continue
            if not self._slots.acquire(blocking=False):
                connection.close()
                continue
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        try:
            with connection:
                connection.settimeout(READ_TIMEOUT_SECONDS)
                head = _read_head(connection)
                if head is not None:
                    connection.sendall(self._answer(head))
        except OSError:
            pass  # the client went away, or sent nothing in time
        finally:
            self._slots.release()

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


def _read_head(connection: socket.socket) -> bytes | None:
    """The request head, up to its blank line; None if the client sent none or too much."""
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = connection.recv(4096)
        if not chunk or len(head) + len(chunk) > _MAX_HEAD:
            return None
        head += chunk
    return head


_REASONS = {200: b"OK", 404: b"Not Found", 503: b"Service Unavailable"}


def _response(status: int, body: dict[str, object]) -> bytes:
    payload = json.dumps(body, separators=(",", ":")).encode()
    return (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
        b"cache-control: no-store\r\nx-content-type-options: nosniff\r\n"
        b"connection: close\r\n\r\n%s" % (status, _REASONS[status], len(payload), payload)
    )
