"""Serving the app with uvicorn (uvloop, httptools), in `python -m gateway` and in tests."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import socket
from collections.abc import Iterator

import uvicorn
from fastapi import FastAPI

from gateway.settings import GatewaySettings

log = logging.getLogger("gateway.server")


def uvicorn_config(app: FastAPI, settings: GatewaySettings) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        loop="uvloop",
        http="httptools",
        ws="none",
        lifespan="on",
        # Logging is ours (servicekit.logs): one format, the request id on every line.
        log_config=None,
        access_log=False,
        server_header=False,
        timeout_graceful_shutdown=math.ceil(settings.shutdown_grace_seconds),
    )


class GatewayServer(uvicorn.Server):
    """A uvicorn server that says where it listens once it does (`address`, `ready`)."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.address = ""
        self.ready = asyncio.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if not self.started:
            return
        host, port = self.servers[0].sockets[0].getsockname()[:2]
        self.address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        log.info("serving gateway on %s", self.address)
        self.ready.set()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            yield
            # uvicorn re-raises the SIGTERM/SIGINT that stopped it once it is done, which
            # kills the process with that signal; the shutdown was clean, so exit 0.
            self._captured_signals.clear()
