"""The shared server plumbing, on a real server on a real port (in-process)."""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from servicekit import errors
from servicekit.server import BindError, GrpcServer, build_server
from tandem_client import errors as client_errors
from tandem_protos.users.v1 import users_pb2, users_pb2_grpc
from tests.support import probe
from tests.support.rpc import reason


@pytest.fixture
async def server() -> AsyncIterator[GrpcServer]:
    server = build_server("127.0.0.1:0", [probe.service()], reflection=probe.authenticate)
    await server.start()
    yield server
    await server.stop(0)


@pytest.fixture
async def channel(server: GrpcServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(server.address) as channel:
        yield channel


def get_user(channel: grpc.aio.Channel, user_id: str, request_id: str | None = None) -> Any:
    stub = users_pb2_grpc.UsersServiceStub(channel)
    metadata = (("x-request-id", request_id),) if request_id else None
    return stub.GetUser(users_pb2.GetUserRequest(id=user_id), metadata=metadata)


async def trailer(call_or_error: Any, key: str) -> str | bytes | None:
    """A trailer of a finished call (aio: a coroutine) or of an AioRpcError (plain)."""
    trailers = call_or_error.trailing_metadata()
    if inspect.isawaitable(trailers):
        trailers = await trailers
    return dict(trailers or ()).get(key)


async def test_health_reports_serving_for_the_server_and_each_service(
    channel: grpc.aio.Channel,
) -> None:
    health = health_pb2_grpc.HealthStub(channel)
    for name in ("", probe.SERVICE_NAME):
        response = await health.Check(health_pb2.HealthCheckRequest(service=name))
        assert response.status == health_pb2.HealthCheckResponse.SERVING
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await health.Check(health_pb2.HealthCheckRequest(service="nope.v1.Nope"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND


async def list_services(channel: grpc.aio.Channel, metadata: Any = None) -> set[str]:
    stub = reflection_pb2_grpc.ServerReflectionStub(channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    async for response in stub.ServerReflectionInfo(iter([request]), metadata=metadata):
        return {s.name for s in response.list_services_response.service}
    raise AssertionError("no reflection response")


async def test_reflection_needs_a_credential(channel: grpc.aio.Channel) -> None:
    # Refused on its metadata alone, before any message: the call sends none. A message
    # written as the refusal arrives can fail to send, and grpc.aio then reports that
    # failure (INTERNAL, "Failed execute_batch") in place of the server's status.
    call = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo()
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call.read()
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert reason(caught.value) == "CREDENTIALS_MISSING"
    assert await trailer(caught.value, "x-request-id")  # through the call interceptor


async def test_reflection_lists_the_services(channel: grpc.aio.Channel) -> None:
    names = await list_services(channel, probe.CREDENTIALS)
    assert names == {
        probe.SERVICE_NAME,
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }


async def test_request_id_is_echoed_in_trailers(channel: grpc.aio.Channel) -> None:
    call = get_user(channel, "u1", request_id="req-123")
    assert (await call).id == "u1"
    assert await trailer(call, "x-request-id") == "req-123"


async def test_request_id_is_generated_when_missing_or_malformed(channel: grpc.aio.Channel) -> None:
    for given in (None, "has spaces", "semi;colon", "x" * 200):
        call = get_user(channel, "u1", request_id=given)
        await call
        echoed = await trailer(call, "x-request-id")
        assert isinstance(echoed, str) and len(echoed) == 36 and echoed != given


async def test_unexpected_exception_is_internal_with_request_id_and_no_traceback(
    channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await get_user(channel, "boom", request_id="req-boom")
    error = caught.value
    assert error.code() == grpc.StatusCode.INTERNAL
    assert error.details() == "internal error (request id req-boom)"
    assert "secret" not in str(error.debug_error_string())
    assert await trailer(error, "x-request-id") == "req-boom"
    # ...while the server log keeps the traceback, tagged with the request id.
    logged = [r for r in caplog.records if r.name == "servicekit.errors"]
    assert logged and logged[0].exc_info is not None
    assert getattr(logged[0], "request_id", None) in (None, "req-boom")


async def test_domain_error_becomes_its_status_with_rich_details(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await get_user(channel, "invalid", request_id="req-inv")
    error = caught.value
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert error.details() == "id: must be a UUID"
    violations = client_errors.field_violations(client_errors.rich_status(error))
    assert violations == (errors.FieldViolation("id", "must be a UUID"),)
    assert await trailer(error, "x-request-id") == "req-inv"


async def test_retryable_error_sends_retry_after(channel: grpc.aio.Channel) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await get_user(channel, "busy")
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert await trailer(caught.value, "retry-after") == "3"


class AccessLines(logging.Handler):
    """The access log's lines, and an event once `count` have come: a call's line is
    written after its status is sent, so its caller can have the status first."""

    def __init__(self, count: int) -> None:
        super().__init__()
        self.lines: list[str] = []
        self.count = count
        self.all_in = asyncio.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())
        if len(self.lines) >= self.count:
            self.all_in.set()


async def test_access_log_has_method_status_duration_and_request_id(
    channel: grpc.aio.Channel, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="servicekit.access")
    access = AccessLines(2)
    logging.getLogger("servicekit.access").addHandler(access)
    try:
        await get_user(channel, "u2", request_id="req-log")
        with pytest.raises(grpc.aio.AioRpcError):
            await get_user(channel, "invalid", request_id="req-log2")
        await asyncio.wait_for(access.all_in.wait(), 10)
    finally:
        logging.getLogger("servicekit.access").removeHandler(access)
    lines = access.lines
    assert any(
        line.startswith("/users.v1.UsersService/GetUser OK ") and line.endswith("ms")
        for line in lines
    )
    assert any(
        line.startswith("/users.v1.UsersService/GetUser INVALID_ARGUMENT ") for line in lines
    )


async def test_a_taken_port_is_a_clear_bind_error(server: GrpcServer) -> None:
    with pytest.raises(BindError, match=f"cannot listen on {server.address}"):
        build_server(server.address, [probe.service()])


async def test_background_work_runs_while_serving_and_is_cancelled_at_stop(
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = build_server("127.0.0.1:0", [probe.service()])
    began, ended = asyncio.Event(), asyncio.Event()

    async def forever() -> None:
        began.set()
        try:
            await asyncio.Event().wait()
        finally:
            ended.set()

    async def failing() -> None:
        raise RuntimeError("boom")

    server.while_serving(forever)
    server.while_serving(failing)
    await asyncio.sleep(0)
    assert not began.is_set()  # not before the server serves
    await server.start()
    await began.wait()
    await server.stop(0)
    assert ended.is_set()
    failures = [r for r in caplog.records if r.message == "background work of the server failed"]
    assert [str(r.exc_info[1]) for r in failures if r.exc_info] == ["boom"]
