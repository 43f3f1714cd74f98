"""The gateway's one middleware: request id, body limit, unexpected faults, access log.

Pure ASGI and a single layer, because it runs on every request (Starlette's
BaseHTTPMiddleware costs a task group and stream per request and layer). Per request it
- takes `X-Request-ID` from the client when well-formed, else makes one; puts it in the
  scope (problem bodies), in the logging context (every log line; `servicekit.logs`)
  and in the gRPC metadata of upstream calls (`tandem_client.Connection` sends it), and
  returns it on the response;
- answers 413 at once when `Content-Length` exceeds the limit, and stops a body without
  one (chunked) as soon as the bytes read exceed it;
- turns any exception that escapes the app into a 500 problem with a generic detail,
  logging the traceback;
- logs one line: method, path, status, duration.
"""

from __future__ import annotations

import logging
import time

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway.problems import REQUEST_ID_SCOPE_KEY, ProblemError, problem_response
from servicekit.interceptor import accept_request_id
from servicekit.logs import request_id_var

access_log = logging.getLogger("gateway.access")
error_log = logging.getLogger("gateway.errors")

UNEXPECTED_DETAIL = "an unexpected error occurred; quote the request id to report it"


class ContentTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body exceeds the limit of {limit} bytes")


class RequestContextMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int, access_log: bool = True) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given_id: str | None = None
        content_length: int | None = None
        for key, value in scope["headers"]:
            if key == b"x-request-id":
                given_id = value.decode("latin-1")
            elif key == b"content-length":
                content_length = int(value) if value.isdigit() else None
        request_id = accept_request_id(given_id)
        scope[REQUEST_ID_SCOPE_KEY] = request_id
        token = request_id_var.set(request_id)
        id_header = (b"x-request-id", request_id.encode("ascii"))
        started = time.perf_counter()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [*message.get("headers", ()), id_header]
            await send(message)

        limit = self.max_body_bytes
        received = 0

        async def receive_limited() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise ContentTooLarge(limit)
            return message

        try:
            if content_length is not None and content_length > limit:
                too_large = ProblemError(413, ContentTooLarge(limit).detail)
                await problem_response(too_large, request_id)(scope, receive, send_with_id)
            else:
                # With a Content-Length the HTTP parser reads exactly that many bytes.
                inner_receive = receive if content_length is not None else receive_limited
                await self.app(scope, inner_receive, send_with_id)
        except Exception:
            error_log.exception("unexpected error in %s %s", scope["method"], scope["path"])
            if status:  # the response has begun: all that is left is to drop the connection
                raise
            fault = ProblemError(500, UNEXPECTED_DETAIL)
            await problem_response(fault, request_id)(scope, receive, send_with_id)
        finally:
            if self.access_log:
                elapsed_ms = (time.perf_counter() - started) * 1000
                access_log.info(
                    "%s %s %d %.2fms", scope["method"], scope["path"], status, elapsed_ms
                )
            request_id_var.reset(token)
