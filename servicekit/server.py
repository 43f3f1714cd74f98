"""The one place a gRPC server is built and run: every service goes through here.

`build_server` returns a bound but not started server with health, reflection (for
authenticated callers, unless turned off) and the call interceptor installed (which
also caps the calls in flight: `max_concurrent_rpcs`), on a
plaintext port or, given `ServerTls`, a TLS or mTLS one whose certificates rotate without a restart
(servicekit.tls); `serve_until_signalled` runs it until SIGTERM or SIGINT and then
shuts it down gracefully:

1. health turns NOT_SERVING for every service (watchers see it, then their watch ends);
2. the server refuses new calls and gives in-flight calls `grace` seconds to finish;
3. what is still running after that is cancelled, and the coroutine returns.
"""

from __future__ import annotations

import asyncio
import logging
import re
import signal
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Coroutine,
    Sequence,
)
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection as server_reflection
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from servicekit.errors import StartupError
from servicekit.health import HealthServicer
from servicekit.heap import settle_heap
from servicekit.interceptor import CallInterceptor
from servicekit.logs import message_of
from servicekit.tls import ServerTls, server_credentials

log = logging.getLogger("servicekit.server")

# Every option spelled out with why (see grpc's keep_alive example).
SERVER_OPTIONS: Sequence[tuple[str, int]] = (
    # A second server on the same port must fail to bind, not silently share it.
    ("grpc.so_reuseport", 0),
    # Let clients keep idle channels alive with pings every 10 s or more...
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    # ...and ping them ourselves, so dead peers free their resources.
    ("grpc.keepalive_time_ms", 60_000),
    ("grpc.keepalive_timeout_ms", 20_000),
    # Clients reconnect every 5 minutes, so a gateway resolving dns:/// targets finds
    # replicas added since; in-flight calls are not cut (no max_connection_age_grace).
    ("grpc.max_connection_age_ms", 300_000),
)


@dataclass(frozen=True, slots=True)
class Service:
    """A servicer to host: its full proto name and the generated `add_..._to_server`."""

    name: str
    register: Callable[[grpc.aio.Server], None]


class BindError(StartupError):
    """The listen address could not be bound (in use, or not a local address)."""


@dataclass(slots=True)
class GrpcServer:
    server: grpc.aio.Server
    health: HealthServicer
    port: int
    host: str
    service_names: tuple[str, ...]
    tls: ServerTls | None = None
    _started: bool = field(default=False)
    _background: list[Callable[[], Coroutine[Any, Any, None]]] = field(default_factory=list)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def transport(self) -> str:
        """How clients connect, for the log: plaintext, TLS or mTLS, and with what files."""
        if self.tls is None:
            return "plaintext (no TLS)"
        if self.tls.client_ca_file is None:
            return f"TLS with {self.tls.cert_file}"
        return f"mTLS with {self.tls.cert_file}, client certificates from {self.tls.client_ca_file}"

    def while_serving(self, work: Callable[[], Coroutine[Any, Any, None]]) -> None:
        """Run `work` in the background once the server serves, cancelled at `stop`:
        for what the server must neither wait for nor fail on, such as warming a cache."""
        self._background.append(work)

    async def start(self) -> None:
        await self.server.start()
        self._started = True
        for name in ("", *self.service_names):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        for work in self._background:
            task = asyncio.create_task(work())
            task.add_done_callback(_log_failure)
            self._tasks.append(task)

    async def stop(self, grace: float) -> None:
        await self.health.enter_graceful_shutdown()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self.server.stop(grace)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("background work of the server failed", exc_info=task.exception())


# Checks a call's credentials (raising a ServiceError to refuse it), as
# servicekit.callers.CallerResolver.caller does.
Authenticate = Callable[[Any], Awaitable[object]]


# The grpc.aio servicer, which grpc_reflection's stubs leave out.
_AioReflectionServicer: Any = server_reflection.aio.ReflectionServicer  # type: ignore[attr-defined]


class AuthenticatedReflection(_AioReflectionServicer):  # type: ignore[misc]
    """grpc's reflection, for callers that `authenticate` accepts: like every other
    call but health's, it needs a credential (grpcurl's `-H` sends it along)."""

    def __init__(self, service_names: Sequence[str], authenticate: Authenticate) -> None:
        super().__init__(service_names)
        self._authenticate = authenticate

    async def ServerReflectionInfo(  # noqa: N802 (grpc's method name)
        self,
        request_iterator: AsyncIterable[reflection_pb2.ServerReflectionRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[reflection_pb2.ServerReflectionResponse]:
        await self._authenticate(context)
        async for response in super().ServerReflectionInfo(request_iterator, context):
            yield response


def build_server(
    addr: str,
    services: Sequence[Service],
    *,
    tls: ServerTls | None = None,
    reflection: Authenticate | None = None,
    access_log: bool = True,
    max_concurrent_rpcs: int | None = None,
) -> GrpcServer:
    """`reflection`: None leaves it off; else what must accept a caller to reflect.

    `max_concurrent_rpcs`: past it, calls other than health checks get UNAVAILABLE
    with a retry delay at once (servicekit.interceptor); None: no cap."""
    # First: unusable TLS files are a StartupError before anything is built.
    credentials = None if tls is None else server_credentials(tls)
    # Not grpc's own maximum_concurrent_rpcs: it answers RESOURCE_EXHAUSTED, and
    # refuses health checks too.
    interceptor = CallInterceptor(access_log_enabled=access_log, max_in_flight=max_concurrent_rpcs)
    server = grpc.aio.server(interceptors=[interceptor], options=SERVER_OPTIONS)
    for service in services:
        service.register(server)
    health_servicer = HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    names = tuple(s.name for s in services)
    if reflection is not None:
        reflected = (*names, health.SERVICE_NAME, server_reflection.SERVICE_NAME)
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            AuthenticatedReflection(reflected, reflection), server
        )
    try:
        if credentials is None:
            port = server.add_insecure_port(addr)
        else:
            port = server.add_secure_port(addr, credentials)
    except RuntimeError as exc:
        raise BindError(f"cannot listen on {addr}: {exc}") from None
    if port == 0:
        raise BindError(f"cannot listen on {addr}: address in use or not local")
    host = addr.rsplit(":", 1)[0]
    return GrpcServer(server, health_servicer, port, host, names, tls)


# The line that says a server is up and where; the gateway writes it too. Tests and
# benchmarks wait for it through parse_serving, never with a pattern of their own.
SERVING = "serving %s on %s"
_SERVING_LINE = re.compile(r"serving (?P<names>.+) on (?P<address>\S+:\d+)$")


def parse_serving(line: str) -> str | None:
    """The address (host:port) in a line logged with SERVING, in either log format;
    None for any other line."""
    match = _SERVING_LINE.search(message_of(line))
    return match["address"] if match else None


async def serve_until_signalled(server: GrpcServer, grace: float) -> None:
    """Run `server` until SIGTERM or SIGINT, then shut it down within `grace` seconds."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    # asyncio.run only turns SIGINT into KeyboardInterrupt; SIGTERM would kill the
    # process outright. Both become a graceful shutdown here.
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await server.start()
        settle_heap()
        log.info(SERVING, ", ".join(server.service_names), server.address)
        # A line of its own: tests and tools parse the one above.
        log.info("transport: %s", server.transport)
        await stop.wait()
        log.info("shutting down: in-flight calls have %.1fs to finish", grace)
        await server.stop(grace)
        log.info("stopped")
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)
