"""Serving the app with uvicorn (uvloop, httptools), in `python -m gateway` and in tests.

The HTTP protocol is gateway.edge's (uvicorn's httptools one with limits and read
timeouts); the listening socket is gateway.acceptor's, a process of its own that accepts,
passes the connections below the cap to the loop and refuses those past it itself;
`GatewayServer` checks the edge's deadlines on each of uvicorn's ticks, and at shutdown
stops that process (the port closes), gives requests the grace, then has the edge end
what still runs, which the middleware answers 503 (uvicorn's own timeout would answer a
plain-text 500).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import socket
import sys
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI
from uvicorn.config import STARTUP_FAILURE

from gateway.acceptor import AcceptorError, AcceptorProcess
from gateway.acceptor_child import DATE_MARK, REQUEST_ID_MARK
from gateway.edge import (
    SHUTDOWN,
    TOO_MANY_CONNECTIONS,
    UNCAPPED_PATHS,
    EdgeConfig,
    EdgeLimits,
    EdgeProtocol,
    end_requests,
    expire_late,
    refusal,
)
from gateway.health_port import HealthPort, Heartbeat, host_port
from gateway.settings import GatewaySettings
from servicekit import metrics
from servicekit.server import SERVING

log = logging.getLogger("gateway.server")

# After the grace, how long cancelled requests may take to be answered before the
# process stops waiting for them.
_ANSWER_SECONDS = 5.0


def uvicorn_config(app: FastAPI, settings: GatewaySettings) -> EdgeConfig:
    limits = EdgeLimits(
        max_header_bytes=settings.max_header_bytes,
        max_headers=settings.max_headers,
        header_timeout=settings.header_timeout_seconds,
        body_timeout=settings.body_timeout_seconds,
        max_connections=settings.max_connections,
    )
    return EdgeConfig(
        app,
        limits=limits,
        shutdown_grace=settings.shutdown_grace_seconds,
        health=settings.health_host_port,
        health_stale_after=settings.health_stale_seconds,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        ws="none",
        lifespan="on",
        # Logging is ours (servicekit.logs): one format, the request id on every line.
        log_config=None,
        access_log=False,
        server_header=False,
        # Not uvicorn's X-Forwarded-For handling: it believes 127.0.0.1 by default, so
        # any local client could name its own address. gateway.client_address reads the
        # header, from GATEWAY_TRUSTED_PROXIES only.
        proxy_headers=False,
    )


class GatewayServer(uvicorn.Server):
    """A uvicorn server that says where it listens once it does (`address`, `ready`)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.address = ""
        # Where gateway.health_port serves, once it does.
        self.health_address = ""
        self.ready = asyncio.Event()
        self._shutdown_timers: list[asyncio.TimerHandle] = []
        self._health: tuple[HealthPort, Heartbeat] | None = None
        self._acceptor: AcceptorProcess | None = None
        # The accepting process went away on its own: the server stopped for that.
        self.acceptor_failed = False
        # The accepting process's refusals already in the metrics.
        self._refusals_counted = 0

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        config = self.config
        if (
            sockets is None
            and isinstance(config, EdgeConfig)
            and config.ssl is None
            and config.fd is None
            and config.uds is None
        ):
            name = await self._start_accepting(config)
        else:  # uvicorn's own accepting, on the loop
            await super().startup(sockets)
            if not self.started:
                return
            name = self.servers[0].sockets[0].getsockname()
        self.address = host_port(name)
        log.info(SERVING, "gateway", self.address)
        self._start_health()
        self.ready.set()

    async def _start_accepting(self, config: EdgeConfig) -> tuple[str, int]:
        """uvicorn's startup, but the listening socket is gateway.acceptor's process's;
        where it listens."""
        await self.lifespan.startup()
        if self.lifespan.should_exit:
            sys.exit(STARTUP_FAILURE)
        loop = asyncio.get_running_loop()
        host = config.host or "0.0.0.0"  # noqa: S104 - uvicorn's default too
        try:
            listener = socket.create_server(
                (host, config.port),
                family=socket.AF_INET6 if ":" in host else socket.AF_INET,
                backlog=config.backlog,
            )
        except OSError as exc:
            log.error("cannot listen on %s:%d: %s", host, config.port, exc)
            await self.lifespan.shutdown()
            sys.exit(STARTUP_FAILURE)
        name: tuple[str, int] = listener.getsockname()[:2]
        adopting: set[asyncio.Task[None]] = set()

        async def serve(connection: socket.socket) -> None:
            try:
                await loop.connect_accepted_socket(protocol, connection)
            except OSError as exc:
                connection.close()
                acceptor.connection_closed()
                log.debug("a connection was gone before it was served: %s", exc)

        def adopt(connection: socket.socket) -> None:
            task = loop.create_task(serve(connection))
            adopting.add(task)  # held until done: the loop keeps only weak references
            task.add_done_callback(adopting.discard)

        acceptor = AcceptorProcess(
            listener,
            loop,
            adopt,
            max_connections=config.edge_limits.max_connections,
            header_timeout=config.edge_limits.header_timeout,
            uncapped=UNCAPPED_PATHS,
            refusal=_refusal_template(config),
            on_gone=self._acceptor_gone,
        )
        protocol = functools.partial(
            EdgeProtocol,
            config=config,
            server_state=self.server_state,
            app_state=self.lifespan.state,
            on_lost=acceptor.connection_closed,
        )
        try:
            await acceptor.start()
        except AcceptorError as exc:
            log.error("%s", exc)
            await self.lifespan.shutdown()
            sys.exit(STARTUP_FAILURE)
        self._acceptor = acceptor
        self.servers = []
        self.started = True
        return name

    def _acceptor_gone(self) -> None:
        self.acceptor_failed = True
        self.should_exit = True

    def _start_health(self) -> None:
        config = self.config
        if not isinstance(config, EdgeConfig) or config.health is None:
            return
        heartbeat = Heartbeat(asyncio.get_running_loop())
        port = HealthPort(*config.health, heartbeat, stale_after=config.health_stale_after)
        heartbeat.start()
        port.start()
        self._health = (port, heartbeat)
        self.health_address = port.address

    async def on_tick(self, counter: int) -> bool:
        expire_late(self.server_state.connections, asyncio.get_running_loop().time())
        self._count_refusals()
        return await super().on_tick(counter)

    def _count_refusals(self) -> None:
        """Add the accepting process's refusals since the last tick to the metrics."""
        if self._acceptor is None:
            return
        refused = self._acceptor.refused
        if refused > self._refusals_counted:
            metrics.refused(TOO_MANY_CONNECTIONS.reason or "", refused - self._refusals_counted)
            self._refusals_counted = refused

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        # uvicorn's own timeout is unset, so it waits for every request; at the grace's
        # end the edge cancels what still runs, and the wait ends once each is answered.
        if not isinstance(self.config, EdgeConfig):
            await super().shutdown(sockets)
            return
        grace = self.config.shutdown_grace
        log.info("shutting down: requests in flight have %gs to finish", grace)
        if self._acceptor is not None:  # no new connections
            await self._acceptor.stop()
        loop = asyncio.get_running_loop()
        self._shutdown_timers.append(loop.call_later(grace, self._end_requests, grace))
        try:
            await super().shutdown(sockets)
        finally:
            for timer in self._shutdown_timers:
                timer.cancel()
            # Alive to the last: a liveness probe must not fail during the grace.
            if self._health is not None:
                port, heartbeat = self._health
                heartbeat.stop()
                await asyncio.to_thread(port.close)

    def _end_requests(self, grace: float) -> None:
        log.warning(
            "the shutdown grace of %gs is over: ending %d requests still running",
            grace,
            len(self.server_state.tasks),
        )
        end_requests(self.server_state.connections, SHUTDOWN)
        # A request that ignores its cancellation must not hold the process for ever.
        loop = asyncio.get_running_loop()
        self._shutdown_timers.append(loop.call_later(_ANSWER_SECONDS, self._give_up))

    def _give_up(self) -> None:
        log.error("requests still running %gs after they were ended; exiting", _ANSWER_SECONDS)
        self.force_exit = True

    @property
    def acceptor_pid(self) -> int | None:
        """The accepting process's id (gateway.acceptor), once started."""
        return None if self._acceptor is None else self._acceptor.pid

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            yield
            # uvicorn re-raises the SIGTERM/SIGINT that stopped it once it is done, which
            # kills the process with that signal; the shutdown was clean, so exit 0.
            self._captured_signals.clear()


def _refusal_template(config: EdgeConfig) -> bytes:
    """The edge's refusal past the connection cap, with the marks where the accepting
    process writes its Date (as uvicorn's default headers carry it) and request id."""
    date = [(b"date", DATE_MARK)] if config.date_header else []
    headers = [*date, *config.encoded_headers]
    return refusal(TOO_MANY_CONNECTIONS, headers, request_id=REQUEST_ID_MARK.decode())
