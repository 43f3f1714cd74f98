"""The HTTP edge: uvicorn's httptools protocol with the limits a public server needs.

uvicorn's protocol takes a request head of any size (httptools, like llhttp under it,
has no limit of its own: a 16 MB header was accepted, held in memory meanwhile),
waits for ever for a head or body that trickles in (slowloris), answers its refusals
in text/plain, and lets a request run on after its client went away. `EdgeProtocol`
adds, per connection:

- a cap on the head: the URL at most `max_header_bytes` (else 414), the headers
  together at most that (else 431), at most `max_headers` of them (else 431); what an
  unfinished head holds is bounded by the bytes received, so it is never buffered whole;
- read timeouts: a new connection must start a request within `header_timeout` (else
  it is closed), a head must be complete `header_timeout` after its first byte, a body
  `body_timeout` after its head; else 408 and the connection closes. `GatewayServer`
  checks the deadlines on uvicorn's tick (every 0.1 s), so no timer is armed per
  request;
- a cap on connections: a connection opened while `max_connections` are open has its
  requests answered 503 (`TOO_MANY_CONNECTIONS`, `Retry-After`) and is closed, here, as
  soon as the request head is parsed: no task, no middleware, no app (a flood of such
  connections costs the loop little), health checks excepted, so a probe still gets
  through;
- a client that disconnects cancels its request's task, and with it the upstream call;
- a malformed request gets a 400 problem rather than uvicorn's text.

A request's task cancelled here carries why in its scope (`CANCELLED_BY`), for the
middleware to answer: a cancelled gRPC call raises a fresh CancelledError, so a cancel
message would not survive the way up.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import httptools
import uvicorn
from uvicorn.protocols.http.httptools_impl import (
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.server import ServerState

from gateway.problems import PROBLEM_MEDIA_TYPE, ProblemError, problem_bytes
from servicekit import metrics

log = logging.getLogger("gateway.edge")

# Scope keys the middleware reads.
CANCELLED_BY = "tandem.cancelled_by"
# The request's gateway.middleware.InFlight: its place in the in-flight count.
IN_FLIGHT = "tandem.in_flight"
# Why a request's task was cancelled (the value under CANCELLED_BY).
CLIENT_GONE = "client-gone"
BODY_TIMEOUT = "body-timeout"
SHUTDOWN = "shutdown"

# Health checks are cheap and must answer however busy the gateway is.
UNCAPPED_PATHS = frozenset({"/healthz", "/readyz"})
_UNCAPPED_URLS = frozenset(path.encode() for path in UNCAPPED_PATHS)
# What a refused client is told to wait: the caps are about this instant's load.
RETRY_AFTER = "1"
TOO_MANY_CONNECTIONS = ProblemError(
    503,
    "the gateway has too many connections open; retry shortly",
    headers={"Retry-After": RETRY_AFTER},
    reason="TOO_MANY_CONNECTIONS",
)

# An unfinished header is held by httptools until it ends; this much past the cap (one
# read's worth) may be buffered before the raw byte count refuses it.
_UNPARSED_SLACK = 64 * 1024
SECURITY_HEADERS = ((b"x-content-type-options", b"nosniff"),)


@dataclass(frozen=True, slots=True)
class EdgeLimits:
    max_header_bytes: int = 16 * 1024
    max_headers: int = 100
    header_timeout: float = 10.0
    body_timeout: float = 30.0
    max_connections: int = 2048


class EdgeConfig(uvicorn.Config):
    """uvicorn's Config, serving with EdgeProtocol under `limits`."""

    def __init__(
        self,
        app: Any,
        *,
        limits: EdgeLimits,
        shutdown_grace: float,
        health: tuple[str, int] | None = None,
        health_stale_after: float = 5.0,
        **options: Any,
    ) -> None:
        super().__init__(app, http=EdgeProtocol, **options)
        self.edge_limits = limits
        # GatewayServer ends what still runs after this many seconds of shutdown.
        self.shutdown_grace = shutdown_grace
        # Where GatewayServer serves gateway.health_port, if anywhere.
        self.health = health
        self.health_stale_after = health_stale_after


class _Refused(Exception):
    """Raised in a parser callback: stops the parser, answered with `problem`."""

    def __init__(self, problem: ProblemError) -> None:
        super().__init__(problem.detail)
        self.problem = problem


# Where a connection is in its current request (EdgeProtocol._phase).
_WAITING = 0  # connected, not a byte of a request yet
_HEAD = 1  # reading a request head
_AFTER_HEAD = 2  # reading the body, or the app at work, or idle between requests


class EdgeProtocol(HttpToolsProtocol):
    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
        *,
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        """`on_lost` is called once the connection is closed (gateway.acceptor counts)."""
        super().__init__(config, server_state, app_state, _loop)
        self._on_lost = on_lost
        limits = config.edge_limits if isinstance(config, EdgeConfig) else EdgeLimits()
        self._limits = limits
        self._max_head = limits.max_header_bytes
        self._phase = _WAITING
        # When the current phase must be over (GatewayServer checks); None when no
        # limit applies (uvicorn's keep-alive timeout covers idling between requests).
        self.deadline: float | None = None
        self._head_bytes = 0  # of the headers, as the parser reported them
        self._unparsed = 0  # received while the head was unfinished
        self._over_capacity = False
        # The request whose app task runs on this connection, and its cycle.
        self._running: tuple[asyncio.Task[None], RequestResponseCycle] | None = None

    # Connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.deadline = self.loop.time() + self._limits.header_timeout
        self._over_capacity = len(self.connections) > self._limits.max_connections

    def connection_lost(self, exc: Exception | None) -> None:
        running = self._running
        super().connection_lost(exc)
        if running is not None and not running[1].response_complete:
            self._cancel(running, CLIENT_GONE)
        if self._on_lost is not None:
            self._on_lost()

    def data_received(self, data: bytes) -> None:
        # uvicorn's, but refusals are problems; a refusal from a callback arrives as
        # the parser's HttpParserCallbackError, the _Refused in its context.
        self._unset_keepalive_if_required()
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserCallbackError as exc:
            refused = exc.__context__
            if isinstance(refused, _Refused):
                self._refuse_with(refused.problem)
            else:
                self._refuse(400, "the request is not valid HTTP/1.1")
            return
        except httptools.HttpParserUpgrade:
            if self._should_upgrade():
                self.handle_websocket_upgrade()
            else:
                self._unsupported_upgrade_warning()
        except httptools.HttpParserError:
            self._refuse(400, "the request is not valid HTTP/1.1")
            return
        if self._phase == _HEAD:
            # The parser holds an unfinished URL or header until it ends, uncounted by
            # the callbacks so far: bound it by the bytes received.
            self._unparsed += len(data)
            if self._unparsed > self._max_head + _UNPARSED_SLACK:
                self._refuse(431, self._too_large_detail())

    # Parser callbacks, on every request: a few attribute updates each, and the caps
    # checked once the head is complete (the check on unparsed bytes above bounds what
    # is held meanwhile).

    def on_message_begin(self) -> None:
        HttpToolsProtocol.on_message_begin(self)
        self._phase = _HEAD
        self._head_bytes = 0
        self._unparsed = 0
        self.deadline = self.loop.time() + self._limits.header_timeout

    def on_header(self, name: bytes, value: bytes) -> None:
        # uvicorn's own four lines, inline rather than through super(): this runs for
        # every header of every request.
        self._head_bytes += len(name) + len(value)
        name = name.lower()
        if name == b"expect" and value.lower() == b"100-continue":
            self.expect_100_continue = True
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        max_head = self._max_head
        if self._head_bytes > max_head or len(self.url) > max_head:
            raise self._too_large()
        if len(self.headers) > self._limits.max_headers:
            raise _Refused(
                ProblemError(431, f"the request has more than {self._limits.max_headers} headers")
            )
        self._phase = _AFTER_HEAD
        # Cleared by expire() once passed, if the body came in time.
        self.deadline = self.loop.time() + self._limits.body_timeout
        if self._over_capacity and self.url.split(b"?", 1)[0] not in _UNCAPPED_URLS:
            raise _Refused(TOO_MANY_CONNECTIONS)
        HttpToolsProtocol.on_headers_complete(self)

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        # uvicorn's, keeping the task so that a disconnect or a deadline can cancel it
        # (uvicorn's reset_contextvars option is not used here).
        task = self.loop.create_task(cycle.run_asgi(app))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)
        self._running = (task, cycle)

    # Called by GatewayServer

    def expire(self) -> None:
        """The deadline passed: the head or the body may be late."""
        self.deadline = None
        if self._phase == _WAITING:  # connected and sent nothing
            self.transport.close()
        elif self._phase == _HEAD:
            timeout = self._limits.header_timeout
            self._refuse(408, f"the request head did not arrive within {timeout:g} s")
        elif self.cycle.more_body and not self.cycle.response_complete:
            running = self._running
            if running is not None and running[1] is self.cycle and not self.cycle.response_started:
                # The app waits for the body: the middleware answers 408.
                self.cycle.keep_alive = False
                self._cancel(running, BODY_TIMEOUT)
            else:  # a pipelined request behind another: no way to answer it first
                self.transport.close()
        # else the body came in time (or was not read, and the answer was sent).

    def end_request(self, reason: str) -> None:
        """Cancel the request running on this connection, if any, for `reason`."""
        if self._running is not None:
            self._cancel(self._running, reason)

    # Helpers

    def _too_large(self) -> _Refused:
        if len(self.url) > self._max_head:
            return _Refused(ProblemError(414, f"the URL exceeds {self._max_head} bytes"))
        return _Refused(ProblemError(431, self._too_large_detail()))

    def _too_large_detail(self) -> str:
        return f"the request's headers exceed {self._max_head} bytes"

    def _cancel(self, running: tuple[asyncio.Task[None], RequestResponseCycle], why: str) -> None:
        task, cycle = running
        if not task.done():
            cast(dict[str, Any], cycle.scope)[CANCELLED_BY] = why
            task.cancel()

    def _refuse(self, status: int, detail: str) -> None:
        """Answer `status` as a problem, and close the connection."""
        self._refuse_with(ProblemError(status, detail))

    def _refuse_with(self, problem: ProblemError) -> None:
        if self.transport.is_closing():
            return
        if problem is TOO_MANY_CONNECTIONS:  # a flood's refusals are counted, not logged
            metrics.refused(problem.reason or "")
        else:
            log.info("refused a request at the edge: %d %s", problem.status, problem.detail)
        running = self._running
        if running is None or running[1].response_complete:
            self.transport.write(refusal(problem, self.server_state.default_headers))
        # else a request ahead of this one is still being answered; an answer now would
        # come before its, so the connection just closes (which cancels that one too).
        self.transport.close()


def refusal(
    problem: ProblemError,
    default_headers: list[tuple[bytes, bytes]],
    request_id: str | None = None,
) -> bytes:
    """A whole HTTP/1.1 response carrying `problem`, closing the connection; a new
    request id unless given."""
    request_id = request_id or str(uuid.uuid4())
    body = problem_bytes(problem, request_id)
    headers = [
        *default_headers,
        *((name.lower().encode(), value.encode()) for name, value in problem.headers.items()),
        (b"content-type", PROBLEM_MEDIA_TYPE.encode()),
        (b"content-length", str(len(body)).encode()),
        (b"x-request-id", request_id.encode()),
        *SECURITY_HEADERS,
        (b"connection", b"close"),
    ]
    head = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
    return STATUS_LINE[problem.status] + head + b"\r\n" + body


def expire_late(connections: set[Any], now: float) -> None:
    """Expire every connection of `connections` whose deadline is past `now`."""
    for connection in list(connections):
        if isinstance(connection, EdgeProtocol):
            deadline = connection.deadline
            if deadline is not None and deadline <= now:
                connection.expire()


def end_requests(connections: set[Any], reason: str) -> None:
    for connection in list(connections):
        if isinstance(connection, EdgeProtocol):
            connection.end_request(reason)
