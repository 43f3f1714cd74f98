"""The one server interceptor every service installs.

For each call it
- takes the request id from `x-request-id` metadata (or makes one), puts it in the
  logging context and echoes it in the trailing metadata;
- turns a `ServiceError` into its status with `google.rpc` details, and any other
  exception into INTERNAL with a generic message (the traceback stays in the log);
- writes one access-log line: method, status code, duration;
- records the call's metrics (servicekit.metrics: count by status, duration) while the
  process serves metrics, and makes its server span (servicekit.telemetry), continuing
  the caller's trace, while tracing is on;
- refuses a call at once with UNAVAILABLE and a retry delay while `max_in_flight`
  calls are already running (health checks excepted, so that a busy server still
  looks alive), rather than queueing it into its deadline. grpc's own
  `maximum_concurrent_rpcs` answers RESOURCE_EXHAUSTED, which says "your quota" (429
  at the gateway) and counts health checks too; UNAVAILABLE says "this server, now",
  which clients retry elsewhere.

The three are one wrapper rather than three stacked interceptors because each layer
costs a Python frame and a closure per call, and these run on every call.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc
from grpc.aio import AbortError, ServicerContext
from grpc_status import rpc_status

from servicekit import metrics, telemetry
from servicekit.errors import ServiceError, Unavailable
from servicekit.logs import request_id_var
from servicekit.request_id import REQUEST_ID_KEY, request_id_from

# Calls of these methods are never refused for load.
_UNCAPPED_PREFIX = "/grpc.health.v1.Health/"
_OVERLOADED = "SERVER_OVERLOADED"
# How long a caller refused for load is told to wait.
OVERLOADED_RETRY_SECONDS = 1.0

access_log = logging.getLogger("servicekit.access")
error_log = logging.getLogger("servicekit.errors")

Context: TypeAlias = ServicerContext[Any, Any]
UnaryBehavior: TypeAlias = Callable[[Any, Context], Awaitable[Any]]
StreamBehavior: TypeAlias = Callable[[Any, Context], AsyncIterator[Any]]


def add_trailing_metadata(context: Context, *pairs: tuple[str, str | bytes]) -> None:
    """Add trailers without dropping those already set (such as the request id)."""
    current = tuple(context.trailing_metadata() or ())
    context.set_trailing_metadata(current + pairs)


Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"

# grpc's classes are generic only in the type stubs, not at run time.
if TYPE_CHECKING:
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:
    _ServerInterceptor = grpc.aio.ServerInterceptor


class CallInterceptor(_ServerInterceptor):
    def __init__(
        self, *, access_log_enabled: bool = True, max_in_flight: int | None = None
    ) -> None:
        self._access_log_enabled = access_log_enabled
        self._max_in_flight = max_in_flight
        # Calls running now, health checks included.
        self.in_flight = 0
        # Wrapped handlers, built once per method: the handler a service registers
        # does not change between calls, so neither does its wrapper.
        self._wrapped: dict[tuple[str, int], Handler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler: Handler | None = await continuation(handler_call_details)
        if handler is None:  # an unknown method: grpc answers UNIMPLEMENTED
            return handler  # type: ignore[return-value]
        method: str = getattr(handler_call_details, "method", "?")
        key = (method, id(handler))
        wrapped = self._wrapped.get(key)
        if wrapped is None:
            wrapped = self._wrap(method, handler)
            self._wrapped[key] = wrapped
        return wrapped

    def _wrap(self, method: str, handler: Handler) -> Handler:
        # grpc's stubs type the behaviours as synchronous; on grpc.aio they are async.
        behaviors: Any = handler
        if behaviors.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(method, behaviors.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if behaviors.unary_stream is not None:
            behavior = behaviors.unary_stream
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(method, behavior)
                if inspect.isasyncgenfunction(behavior)
                else self._wrap_unary(method, behavior),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if behaviors.stream_stream is not None and inspect.isasyncgenfunction(
            behaviors.stream_stream
        ):  # reflection's
            return grpc.stream_stream_rpc_method_handler(
                self._wrap_stream(method, behaviors.stream_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        # Client-streaming methods: none of ours has one; pass them through unwrapped.
        return handler

    def _limit_of(self, method: str) -> int | None:
        return None if method.startswith(_UNCAPPED_PREFIX) else self._max_in_flight

    def _wrap_unary(self, method: str, behavior: UnaryBehavior) -> UnaryBehavior:
        limit = self._limit_of(method)
        recorded = metrics.CallMetrics.server(method) if metrics.recording() else None

        async def wrapped(request: Any, context: Context) -> Any:
            request_id, token, started, span = self._begin(method, context)
            code = grpc.StatusCode.OK
            admitted = limit is None or self.in_flight < limit
            if admitted:
                self.in_flight += 1
            try:
                if not admitted:
                    raise _overloaded(limit)
                return await behavior(request, context)
            except BaseException as exc:
                code = _code_for(exc, context)
                await _abort_for(exc, context, request_id)
                raise
            finally:
                if admitted:
                    self.in_flight -= 1
                self._end(method, code, started, recorded, span)
                request_id_var.reset(token)

        return wrapped

    def _wrap_stream(self, method: str, behavior: StreamBehavior) -> StreamBehavior:
        limit = self._limit_of(method)
        recorded = metrics.CallMetrics.server(method) if metrics.recording() else None

        async def wrapped(request: Any, context: Context) -> AsyncIterator[Any]:
            request_id, token, started, span = self._begin(method, context)
            code = grpc.StatusCode.OK
            admitted = limit is None or self.in_flight < limit
            if admitted:
                self.in_flight += 1
            try:
                if not admitted:
                    raise _overloaded(limit)
                async for response in behavior(request, context):
                    yield response
            except BaseException as exc:
                code = _code_for(exc, context)
                await _abort_for(exc, context, request_id)
                raise
            finally:
                if admitted:
                    self.in_flight -= 1
                self._end(method, code, started, recorded, span, stream=True)
                request_id_var.reset(token)

        return wrapped

    @staticmethod
    def _begin(method: str, context: Context) -> tuple[str, Any, float, telemetry.Started | None]:
        # Read once: grpc.aio builds the metadata tuple anew on every call of it.
        metadata = context.invocation_metadata()
        request_id = request_id_from(metadata)  # type: ignore[arg-type]
        token = request_id_var.set(request_id)
        context.set_trailing_metadata(((REQUEST_ID_KEY, request_id),))
        started = time.perf_counter()
        return request_id, token, started, telemetry.grpc_server_span(method, metadata)

    def _end(
        self,
        method: str,
        code: grpc.StatusCode,
        started: float,
        recorded: metrics.CallMetrics | None,
        span: telemetry.Started | None,
        *,
        stream: bool = False,
    ) -> None:
        elapsed = time.perf_counter() - started
        if recorded is not None:
            recorded.ended(code, elapsed, stream=stream)
        if self._access_log_enabled:
            access_log.info("%s %s %.2fms", method, code.name, elapsed * 1000)
        # Ended after the access line, which so carries the span's ids.
        if span is not None:
            telemetry.end_grpc_server_span(span, code)


def _overloaded(limit: int | None) -> Unavailable:
    return Unavailable(
        f"the server is at its limit of {limit} calls in flight; retry shortly",
        retry_after=OVERLOADED_RETRY_SECONDS,
        reason=_OVERLOADED,
    )


def _code_for(exc: BaseException, context: Context) -> grpc.StatusCode:
    """The status a call that raised `exc` ends with, for the access log."""
    if isinstance(exc, ServiceError):
        return exc.code
    if isinstance(exc, AbortError):
        code = context.code()
        return code if isinstance(code, grpc.StatusCode) else grpc.StatusCode.UNKNOWN
    if isinstance(exc, asyncio.CancelledError):
        # The client went away or its deadline passed; grpc answers by itself.
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            return grpc.StatusCode.DEADLINE_EXCEEDED
        return grpc.StatusCode.CANCELLED
    if isinstance(exc, Exception):
        return grpc.StatusCode.INTERNAL
    return grpc.StatusCode.UNKNOWN


async def _abort_for(exc: BaseException, context: Context, request_id: str) -> None:
    """End the call with the status `exc` stands for (raises AbortError).

    Returns without aborting for what grpc already answers itself: an abort the
    handler made, a cancellation, and non-Exception exits such as SystemExit.
    """
    if isinstance(exc, ServiceError):
        if exc.code is grpc.StatusCode.RESOURCE_EXHAUSTED or exc.reason == _OVERLOADED:
            metrics.refused(exc.reason)
        status = rpc_status.to_status(exc.to_rpc_status())
        # Added, not passed to abort(), which would replace the x-request-id trailer.
        add_trailing_metadata(context, *exc.trailing_metadata(), *status.trailing_metadata)
        await context.abort(status.code, status.details)
    elif isinstance(exc, Exception) and not isinstance(exc, AbortError):
        error_log.error("unexpected error in handler", exc_info=exc)
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error (request id {request_id})")
