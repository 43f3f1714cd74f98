"""SIGTERM with a slow call in flight: the call completes, health turns NOT_SERVING,
new calls are refused, and the process exits 0 within the grace period; a gateway
request still running when the grace ends gets a 503 problem."""

from __future__ import annotations

import asyncio
import re
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
import httpx
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tandem_protos.users.v1 import users_pb2, users_pb2_grpc
from tests.conftest import ROOT
from tests.support.ai_standin import running_ai_standin
from tests.support.gateway import (
    Stack,
    assert_problem,
    gateway_settings,
    read_events,
)
from tests.support.processes import ServiceProcess
from tests.support.servers import migrate_users, running_users, users_settings

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


# The gateway: a request still running when the grace ends is answered 503 (problem+json;
# a stream, an `error` event), and its upstream call is cancelled.

GATEWAY_GRACE = 1.0


@asynccontextmanager
async def gateway_process(sqlite_url: str) -> AsyncIterator[tuple[ServiceProcess, Stack]]:
    """A real `python -m gateway` before an in-process users server and ai stand-in; the
    Stack's client talks to the process."""
    await migrate_users(sqlite_url)
    async with running_users(users_settings(sqlite_url)) as users, running_ai_standin() as ai:
        env = {
            "GATEWAY_ADDR": "127.0.0.1:0",
            "GATEWAY_USERS_TARGET": users,
            "GATEWAY_AI_TARGET": ai.address,
            "GATEWAY_SHUTDOWN_GRACE_SECONDS": str(GATEWAY_GRACE),
        }
        async with ServiceProcess(["-m", "gateway"], env, cwd=str(ROOT)) as gateway:
            url = f"http://{await gateway.wait_serving()}"
            async with httpx.AsyncClient(base_url=url, timeout=15) as client:
                settings = gateway_settings(users, ai.address)
                yield gateway, Stack(url, client, ai, users, settings)


async def test_a_gateway_request_running_past_the_grace_gets_a_503_problem(
    sqlite_url: str,
) -> None:
    async with gateway_process(sqlite_url) as (gateway, stack):
        account = await stack.new_account()
        stack.ai_standin.hold("AnalyzeText")
        call = stack.client.post("/v1/analyses", json={"text": "Slow."}, headers=account.headers)
        analysis = asyncio.create_task(call)
        async with asyncio.timeout(10):
            await stack.ai_standin.analyze_started.wait()
        signalled = time.monotonic()
        gateway.send_signal(signal.SIGTERM)
        response = await analysis
        waited = time.monotonic() - signalled
        body = assert_problem(response, 503, "UNAVAILABLE")
        assert body["detail"] == "the gateway is shutting down; retry the request"
        assert response.headers["retry-after"] == "1"
        assert GATEWAY_GRACE <= waited < GATEWAY_GRACE + 4
        # The upstream call was cancelled with it: no analysis is kept.
        async with asyncio.timeout(10):
            await stack.ai_standin.analyze_cancelled.wait()
        assert stack.ai_standin.analyses == {}
        assert await gateway.wait(timeout=10) == 0, gateway.output
    assert "Exception in ASGI application" not in gateway.output
    assert "Internal Server Error" not in gateway.output


async def test_a_gateway_stream_running_past_the_grace_ends_with_a_503_error_event(
    sqlite_url: str,
) -> None:
    async with gateway_process(sqlite_url) as (gateway, stack):
        account = await stack.new_account()
        stack.ai_standin.hold_stream()
        async with stack.client.stream(
            "POST", "/v1/analyses:stream", json={"text": "Slow."}, headers=account.headers
        ) as response:
            assert response.status_code == 200
            async with asyncio.timeout(10):
                await stack.ai_standin.stream_started.wait()
            gateway.send_signal(signal.SIGTERM)
            events = await read_events(response)
        assert [e.name for e in events] == ["partial", "partial", "error", "done"], events
        assert events[-2].data["status"] == 503
        assert events[-2].data["code"] == "UNAVAILABLE"
        async with asyncio.timeout(10):
            await stack.ai_standin.stream_cancelled.wait()
        assert await gateway.wait(timeout=10) == 0, gateway.output
    assert "Exception in ASGI application" not in gateway.output
