"""A service at its cap of calls in flight (servicekit.server's `max_concurrent_rpcs`):
further calls get UNAVAILABLE with a retry delay at once, health checks still answer,
and calls are served again once the running ones end."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from servicekit.server import GrpcServer, Service, build_server
from servicekit.settings import ServiceSettings
from tandem_client.errors import from_rpc_error
from tandem_protos.users.v1 import users_pb2, users_pb2_grpc

CAP = 2


class Held(users_pb2_grpc.UsersServiceServicer):
    """GetUser waits for `release`; `entered` counts the calls that got in."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.entered = asyncio.Semaphore(0)

    async def GetUser(self, request: users_pb2.GetUserRequest, context: Any) -> users_pb2.User:  # noqa: N802
        self.entered.release()
        await self.release.wait()
        return users_pb2.User(id=request.id)


@pytest.fixture
def held() -> Held:
    return Held()  # type: ignore[abstract]


@pytest.fixture
async def server(held: Held) -> AsyncIterator[GrpcServer]:
    register = partial(users_pb2_grpc.add_UsersServiceServicer_to_server, held)
    server = build_server(
        "127.0.0.1:0", [Service("users.v1.UsersService", register)], max_concurrent_rpcs=CAP
    )
    await server.start()
    yield server
    held.release.set()
    await server.stop(0)


async def test_calls_past_the_cap_are_unavailable_with_a_retry_delay(
    server: GrpcServer, held: Held
) -> None:
    async with grpc.aio.insecure_channel(server.address) as channel:
        users = users_pb2_grpc.UsersServiceStub(channel)
        running = [users.GetUser(users_pb2.GetUserRequest(id=f"u{i}")) for i in range(CAP)]
        async with asyncio.timeout(10):
            for _ in range(CAP):
                await held.entered.acquire()

        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await users.GetUser(users_pb2.GetUserRequest(id="late"), timeout=2)
        refused = from_rpc_error(caught.value)
        assert refused.code == grpc.StatusCode.UNAVAILABLE
        assert refused.reason == "SERVER_OVERLOADED"
        assert refused.retry_after == 1.0
        assert held.entered.locked()  # the refused call never reached the servicer

        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=2)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING

        held.release.set()
        assert [(await call).id for call in running] == ["u0", "u1"]
        served = await users.GetUser(users_pb2.GetUserRequest(id="after"), timeout=2)
        assert served.id == "after"


async def test_the_cap_is_a_service_setting_with_a_default() -> None:
    settings = ServiceSettings(addr="127.0.0.1:0", database_url="sqlite+aiosqlite:///x.db")
    assert settings.max_concurrent_rpcs == 1024
