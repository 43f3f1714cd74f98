"""SIGTERM with a slow call in flight: the call completes, health turns NOT_SERVING,
new calls are refused, and the process exits 0 within the grace period."""

from __future__ import annotations

import re
import signal
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tandem_protos.users.v1 import users_pb2, users_pb2_grpc
from tests.conftest import ROOT
from tests.support.processes import ServiceProcess

GRACE = 10.0
WORK = 1.0  # how long the slow call works: well inside the grace period


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
async def test_signal_drains_in_flight_calls_then_exits_zero(signum: signal.Signals) -> None:
    args = ["-m", "tests.support.probe", "127.0.0.1:0", str(GRACE)]
    async with ServiceProcess(args, {}, cwd=str(ROOT)) as server:
        address = await server.wait_serving()
        async with grpc.aio.insecure_channel(address) as channel:
            health = health_pb2_grpc.HealthStub(channel)
            watch = health.Watch(health_pb2.HealthCheckRequest(service=""))
            statuses = watch.__aiter__()
            first = await anext(statuses)
            assert first.status == health_pb2.HealthCheckResponse.SERVING

            users = users_pb2_grpc.UsersServiceStub(channel)
            slow = users.GetUser(users_pb2.GetUserRequest(id=f"slow:{WORK}"))
            await server.wait_for_line(re.compile(r"GetUser slow:\S+ started"))

            signalled = time.monotonic()
            server.send_signal(signum)
            second = await anext(statuses)
            assert second.status == health_pb2.HealthCheckResponse.NOT_SERVING
            # The watch ends once NOT_SERVING was sent, so it does not hold the server.
            assert [r async for r in statuses] == []

            # A new connection is refused while the slow call drains.
            async with grpc.aio.insecure_channel(address) as fresh:
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await users_pb2_grpc.UsersServiceStub(fresh).GetUser(
                        users_pb2.GetUserRequest(id="late"), timeout=5
                    )
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE

            reply = await slow
            assert reply.id == f"slow:{WORK}"

        assert await server.wait(timeout=GRACE + 5) == 0, server.output
        assert time.monotonic() - signalled < GRACE
        assert "shutting down" in server.output


async def test_calls_still_running_after_the_grace_period_are_cancelled() -> None:
    grace = 0.5
    args = ["-m", "tests.support.probe", "127.0.0.1:0", str(grace)]
    async with ServiceProcess(args, {}, cwd=str(ROOT)) as server:
        address = await server.wait_serving()
        async with grpc.aio.insecure_channel(address) as channel:
            users = users_pb2_grpc.UsersServiceStub(channel)
            stuck = users.GetUser(users_pb2.GetUserRequest(id="slow:60"))
            await server.wait_for_line(re.compile(r"GetUser slow:60 started"))
            server.send_signal(signal.SIGTERM)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stuck
            assert caught.value.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED)
        assert await server.wait(timeout=10) == 0, server.output
