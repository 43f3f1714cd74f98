"""The gateway's one middleware: request id, limits, faults, security headers, access log.

Pure ASGI and a single layer, because it runs on every request (Starlette's
BaseHTTPMiddleware costs a task group and stream per request and layer). Per request it
- takes `X-Request-ID` from the client when well-formed, else makes one; puts it in the
  scope (problem bodies), in the logging context (every log line; `servicekit.logs`)
  and in the gRPC metadata of upstream calls (`tandem_client.Connection` sends it), and
  returns it on the response;
- answers 503 at once (with `Retry-After`) while `max_in_flight` requests are being
  handled (`gateway.edge` refuses those on connections past the connection cap itself);
  `/healthz` and `/readyz` are never refused, so probes still see a busy gateway as
  alive and ready;
- answers 413 at once when `Content-Length` exceeds the limit, and stops a body without
  one (chunked) as soon as the bytes read exceed it;
- answers a request whose task `gateway.edge` cancelled: nothing for a client that went
  away, 408 for a body that came too slowly, 503 for one still running when the
  shutdown grace ended (a stream that has begun ends with an `error` event instead);
- turns any exception that escapes the app into a 500 problem with a generic detail,
  logging the traceback;
- adds `X-Content-Type-Options: nosniff` to every response, and HSTS to responses to
  requests that came over https: to uvicorn over TLS, or through one of
  `trusted_proxies` whose `X-Forwarded-Proto` says https (the nearest hop's value);
- logs one line: method, path, status (499: the client went away first), duration;
- records the request's metrics by route template (gateway.metrics) while the process
  serves metrics, and, while tracing is on, makes its server span (continuing the
  client's `traceparent`), current for everything the request does (servicekit.telemetry).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import sys
import time
from collections.abc import Sequence
from typing import NamedTuple

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.client_address import trusted_peer
from gateway.edge import (
    BODY_TIMEOUT,
    CANCELLED_BY,
    CLIENT_GONE,
    IN_FLIGHT,
    RETRY_AFTER,
    SECURITY_HEADERS,
    SHUTDOWN,
    UNCAPPED_PATHS,
)
from gateway.metrics import HttpMetrics, route_of
from gateway.problems import REQUEST_ID_SCOPE_KEY, ProblemError, problem_bytes, problem_response
from gateway.sse import event
from servicekit import metrics, telemetry
from servicekit.logs import request_id_var
from servicekit.request_id import accept_request_id

access_log = logging.getLogger("gateway.access")
error_log = logging.getLogger("gateway.errors")

UNEXPECTED_DETAIL = "an unexpected error occurred; quote the request id to report it"
SHUTDOWN_DETAIL = "the gateway is shutting down; retry the request"
# The status logged for a request whose client left before its answer (as nginx does).
CLIENT_CLOSED = 499


class ContentTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body exceeds the limit of {limit} bytes")


class InFlight:
    """One request's place in `in_flight`: taken when made, given back by `leave()` (at
    the latest when the request ends), taken again by `rejoin()` (gateway.refusals holds
    some answers back on purpose, which is no load)."""

    __slots__ = ("_counted", "_middleware")

    def __init__(self, middleware: RequestContextMiddleware) -> None:
        self._middleware = middleware
        self._counted = True
        middleware.in_flight += 1

    def leave(self) -> None:
        if self._counted:
            self._counted = False
            self._middleware.in_flight -= 1

    def rejoin(self) -> None:
        if not self._counted:
            self._counted = True
            self._middleware.in_flight += 1


class RequestContextMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int,
        max_in_flight: int | None = None,
        hsts_seconds: int = 0,
        trusted_proxies: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network] = (),
        access_log: bool = True,
    ) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.max_in_flight = sys.maxsize if max_in_flight is None else max_in_flight
        self.access_log = access_log
        # Requests being handled now, refused ones included.
        self.in_flight = 0
        hsts = (b"strict-transport-security", b"max-age=%d" % hsts_seconds)
        self._hsts = (hsts,) if hsts_seconds else ()
        self._trusted_proxies = tuple(trusted_proxies)
        self._metrics = HttpMetrics()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = _request_headers(scope)
        content_length, forwarded_proto = given.content_length, given.forwarded_proto
        request_id = accept_request_id(given.request_id)
        scope[REQUEST_ID_SCOPE_KEY] = request_id
        token = request_id_var.set(request_id)
        added: tuple[tuple[bytes, bytes], ...] = (
            (b"x-request-id", request_id.encode("ascii")),
            *SECURITY_HEADERS,
        )
        if self._hsts and (
            scope["scheme"] == "https"
            or (forwarded_proto is not None and self._proxied_https(scope, forwarded_proto))
        ):
            added += self._hsts
        started = time.perf_counter()
        span = telemetry.http_server_span(scope["method"], given.traceparent, given.tracestate)
        status = 0
        response_headers: Sequence[tuple[bytes, bytes]] = ()

        async def send_with_headers(message: Message) -> None:
            nonlocal status, response_headers
            if message["type"] == "http.response.start":
                status = message["status"]
                response_headers = message["headers"] = [*message.get("headers", ()), *added]
            await send(message)

        counted = scope[IN_FLIGHT] = InFlight(self)
        try:
            await self._handle(scope, receive, send_with_headers, request_id, content_length)
        except asyncio.CancelledError:
            status = await _on_cancelled(
                scope, request_id, status, response_headers, send_with_headers
            )
        except Exception:
            error_log.exception("unexpected error in %s %s", scope["method"], scope["path"])
            if status:  # the response has begun: all that is left is to drop the connection
                raise
            fault = ProblemError(500, UNEXPECTED_DETAIL)
            await problem_response(fault, request_id)(scope, receive, send_with_headers)
        finally:
            counted.leave()
            elapsed = time.perf_counter() - started
            route = route_of(scope)
            self._metrics.ended(route, scope["method"], status, elapsed)
            if self.access_log:
                access_log.info(
                    "%s %s %d %.2fms", scope["method"], scope["path"], status, elapsed * 1000
                )
            # Ended after the access line, which so carries the span's ids.
            if span is not None:
                telemetry.end_http_server_span(span, route, status)
            request_id_var.reset(token)

    async def _handle(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        request_id: str,
        content_length: int | None,
    ) -> None:
        limit = self.max_body_bytes
        if (
            self.in_flight > self.max_in_flight  # this request counted already
            or (content_length is not None and content_length > limit)
        ):
            refusal = self._refusal(scope, content_length)
            if refusal is not None:
                if refusal.status == 503 and refusal.reason is not None:
                    metrics.refused(refusal.reason)
                await problem_response(refusal, request_id)(scope, receive, send)
                return
        # With a Content-Length the HTTP parser reads exactly that many bytes.
        inner_receive = receive if content_length is not None else _limited(receive, limit)
        await self.app(scope, inner_receive, send)

    def _proxied_https(self, scope: Scope, forwarded_proto: bytes) -> bool:
        """Whether a trusted proxy forwarded the request, saying it came over https."""
        if forwarded_proto.rsplit(b",", 1)[-1].strip() != b"https":
            return False
        peer = scope.get("client")
        return trusted_peer(peer[0] if peer else None, self._trusted_proxies)

    def _refusal(self, scope: Scope, content_length: int | None) -> ProblemError | None:
        """The problem a request is refused with before the app sees it, if any."""
        if self.in_flight > self.max_in_flight and scope["path"] not in UNCAPPED_PATHS:
            return ProblemError(
                503,
                f"the gateway is handling its limit of {self.max_in_flight} requests; "
                "retry shortly",
                headers={"Retry-After": RETRY_AFTER},
                reason="TOO_MANY_REQUESTS_IN_FLIGHT",
            )
        if content_length is not None and content_length > self.max_body_bytes:
            return ProblemError(413, ContentTooLarge(self.max_body_bytes).detail)
        return None


class _Headers(NamedTuple):
    """What the middleware reads of a request's headers, in one pass over them."""

    request_id: str | None
    content_length: int | None
    forwarded_proto: bytes | None
    traceparent: bytes | None
    tracestate: bytes | None


def _request_headers(scope: Scope) -> _Headers:
    given_id: str | None = None
    content_length: int | None = None
    forwarded_proto = traceparent = tracestate = None
    for key, value in scope["headers"]:
        if key == b"x-request-id":
            given_id = value.decode("latin-1")
        elif key == b"content-length":
            content_length = int(value) if value.isdigit() else None
        elif key == b"x-forwarded-proto":
            forwarded_proto = value
        elif key == b"traceparent":
            traceparent = value
        elif key == b"tracestate":
            tracestate = value
    return _Headers(given_id, content_length, forwarded_proto, traceparent, tracestate)


def _limited(receive: Receive, limit: int) -> Receive:
    """`receive`, raising ContentTooLarge once the body read exceeds `limit` bytes."""
    received = 0

    async def receive_limited() -> Message:
        nonlocal received
        message = await receive()
        if message["type"] == "http.request":
            received += len(message.get("body", b""))
            if received > limit:
                raise ContentTooLarge(limit)
        return message

    return receive_limited


async def _on_cancelled(
    scope: Scope,
    request_id: str,
    status: int,
    response_headers: Sequence[tuple[bytes, bytes]],
    send: Send,
) -> int:
    """Answer a request whose task was cancelled; the status to log.

    Re-raises the cancellation unless the edge made it (CANCELLED_BY in the scope):
    that one is the edge ending the request, which has ended once answered.
    """
    why = scope.get(CANCELLED_BY)
    if why == CLIENT_GONE:
        status = status or CLIENT_CLOSED
    elif not status:
        answer = _cancelled_problem(why)
        await problem_response(answer, request_id)(scope, _nothing_more, send)
        status = answer.status
    elif why == SHUTDOWN and _is_event_stream(response_headers):
        await _end_stream(send, request_id)
    if why is None:
        raise asyncio.CancelledError
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()
    return status


async def _nothing_more() -> Message:
    return {"type": "http.disconnect"}


def _cancelled_problem(why: object) -> ProblemError:
    if why == BODY_TIMEOUT:
        return ProblemError(408, "the request body did not arrive in time")
    # The shutdown grace ended (or something else stopped the request): another
    # replica, or this one restarted, can take it.
    return ProblemError(503, SHUTDOWN_DETAIL, headers={"Retry-After": RETRY_AFTER})


def _is_event_stream(headers: Sequence[tuple[bytes, bytes]]) -> bool:
    return any(
        key.lower() == b"content-type" and value.startswith(b"text/event-stream")
        for key, value in headers
    )


async def _end_stream(send: Send, request_id: str) -> None:
    """End an event stream cut by the shutdown as gateway.sse documents an error."""
    problem = problem_bytes(_cancelled_problem(SHUTDOWN), request_id)
    body = event("error", problem) + event("done", b"{}")
    await send({"type": "http.response.body", "body": body, "more_body": False})
