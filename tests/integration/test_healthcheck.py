"""`python -m servicekit.healthcheck`, the containers' gRPC healthcheck, against real servers.

It runs as the containers run it: a separate `python -m` process, asking a server on a
real port; only its exit code and its one line on stderr count.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from collections.abc import AsyncIterator, Iterator

import grpc
import pytest

from servicekit.server import GrpcServer, build_server
from tandem_protos.users.v1 import users_pb2, users_pb2_grpc
from tests.support import probe
from tests.support.processes import run_command


async def healthcheck(*args: str) -> tuple[int, str]:
    return await run_command(["-m", "servicekit.healthcheck", *args], env={}, timeout=30)


@pytest.fixture
async def server() -> AsyncIterator[GrpcServer]:
    server = build_server("127.0.0.1:0", [probe.service()], access_log=False)
    await server.start()
    yield server
    await server.stop(0)


def closed_port() -> int:
    """A local port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


async def test_serving_server_and_service_exit_0(server: GrpcServer) -> None:
    assert await healthcheck(server.address) == (0, "")
    assert await healthcheck("--service", probe.SERVICE_NAME, server.address) == (0, "")


async def test_unknown_service_exits_1_saying_so(server: GrpcServer) -> None:
    code, output = await healthcheck("--service", "nope.v1.Nope", server.address)
    assert code == 1
    assert output.count("\n") == 1
    assert output.startswith(f"healthcheck: nope.v1.Nope at {server.address} is not serving: ")
    assert "NOT_FOUND" in output


async def test_nothing_listening_exits_1_without_waiting_for_the_timeout() -> None:
    address = f"127.0.0.1:{closed_port()}"
    started = time.monotonic()
    code, output = await healthcheck("--timeout", "20", address)
    elapsed = time.monotonic() - started
    assert code == 1
    assert "UNAVAILABLE" in output
    assert output.count("\n") == 1
    assert elapsed < 10, f"took {elapsed:.1f}s: it waited for the timeout"


async def test_a_server_that_never_answers_exits_1_at_the_timeout() -> None:
    held: list[asyncio.StreamWriter] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    silent = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = silent.sockets[0].getsockname()[1]
    try:
        started = time.monotonic()
        code, output = await healthcheck("--timeout", "0.5", f"127.0.0.1:{port}")
        elapsed = time.monotonic() - started
    finally:
        for writer in held:
            writer.close()
        silent.close()
        await silent.wait_closed()
    assert code == 1
    assert "DEADLINE_EXCEEDED" in output
    assert elapsed < 10


async def test_not_serving_once_shutdown_begins_exits_1(server: GrpcServer) -> None:
    # The first step of GrpcServer.stop, on its own: the server still answers calls.
    await server.health.enter_graceful_shutdown()
    for args in ((), ("--service", probe.SERVICE_NAME)):
        code, output = await healthcheck(*args, server.address)
        assert code == 1
        assert output.rstrip("\n").endswith("is not serving: status is NOT_SERVING")


class _CallStarted(logging.Handler):
    """Sets `started` once the probe logs that a call began (on the serving loop)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.started = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        if record.getMessage().endswith(" started"):
            self.started.set()


@pytest.fixture
def call_started() -> Iterator[asyncio.Event]:
    handler = _CallStarted()
    level = probe.log.level
    probe.log.setLevel(logging.INFO)
    probe.log.addHandler(handler)
    yield handler.started
    probe.log.removeHandler(handler)
    probe.log.setLevel(level)


async def test_a_server_stopping_with_calls_in_flight_exits_1(
    server: GrpcServer, call_started: asyncio.Event
) -> None:
    async with grpc.aio.insecure_channel(server.address) as channel:
        stub = users_pb2_grpc.UsersServiceStub(channel)
        call = asyncio.ensure_future(stub.GetUser(users_pb2.GetUserRequest(id="slow:2")))
        await asyncio.wait_for(call_started.wait(), timeout=10)
        stopping = asyncio.create_task(server.stop(10))
        await asyncio.sleep(0.1)
        assert not stopping.done(), "the in-flight call should hold the grace period open"
        code, output = await healthcheck("--service", probe.SERVICE_NAME, server.address)
        assert code == 1, output
        assert (await call).id == "slow:2"
        await stopping
