"""One error shape for everything: gRPC statuses, HTTP errors, limits, faults; request ids."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import grpc
import pytest

from servicekit import errors
from servicekit.logs import RequestIdFilter
from tests.support.gateway import (
    Account,
    Stack,
    assert_problem,
    field_errors,
    gateway_stack,
)
from tests.support.servers import migrate_users


@pytest.fixture
async def stack(sqlite_url: str) -> AsyncIterator[Stack]:
    await migrate_users(sqlite_url)
    async with gateway_stack(sqlite_url, max_body_bytes=4096) as stack:
        yield stack


@pytest.fixture
async def account(stack: Stack) -> Account:
    return await stack.new_account()


# What the ai service raises on ListAnalyses (a route with no special cases) and what
# the client gets: grpc-gateway's table, gateway.problems.HTTP_STATUS_BY_GRPC_CODE.
RICH = [
    (errors.InvalidArgument.field("page_token", "is stale"), 400, "INVALID_ARGUMENT"),
    (errors.Unauthenticated("who are you"), 401, "UNAUTHENTICATED"),
    (errors.PermissionDenied("not yours"), 403, "PERMISSION_DENIED"),
    (errors.NotFound("nothing here"), 404, "NOT_FOUND"),
    (errors.AlreadyExists("twice"), 409, "ALREADY_EXISTS"),
    (errors.Aborted("lost a race"), 409, "ABORTED"),
    (errors.FailedPrecondition("not now"), 400, "FAILED_PRECONDITION"),
    (errors.ResourceExhausted("slow down", retry_after=3), 429, "RESOURCE_EXHAUSTED"),
    (errors.Unavailable("the database is down", retry_after=2), 503, "UNAVAILABLE"),
    (errors.DeadlineExceeded("took too long"), 504, "DEADLINE_EXCEEDED"),
]


@pytest.mark.parametrize(("error", "status", "code"), RICH, ids=[c for _, _, c in RICH])
async def test_grpc_statuses_map_to_http_statuses(
    stack: Stack, account: Account, error: errors.ServiceError, status: int, code: str
) -> None:
    stack.ai_standin.fail("ListAnalyses", error)
    response = await stack.client.get("/v1/analyses", headers=account.headers)
    body = assert_problem(response, status, code)
    assert body["type"] == "https://tandem.dev/problems/" + code.lower().replace("_", "-")
    assert body["title"] == code.replace("_", " ").capitalize()
    assert body["detail"] == error.message
    if isinstance(error, errors.InvalidArgument):
        assert body["errors"] == [{"field": "page_token", "message": "is stale"}]
    else:
        assert "errors" not in body
    if status in (429, 503):
        assert response.headers["retry-after"] == str(error.retry_after)  # type: ignore[attr-defined]


BARE = [
    (grpc.StatusCode.UNIMPLEMENTED, 501, "the ai service does not support this call"),
    (grpc.StatusCode.UNAVAILABLE, 503, "the ai service is unavailable; retry shortly"),
    (grpc.StatusCode.INTERNAL, 500, "the ai service failed unexpectedly"),
    (grpc.StatusCode.UNKNOWN, 500, "the ai service failed unexpectedly"),
    (grpc.StatusCode.DATA_LOSS, 500, "the ai service failed unexpectedly"),
    (grpc.StatusCode.OUT_OF_RANGE, 400, "the ai service refused the call (OUT_OF_RANGE)"),
]


@pytest.mark.parametrize(("code", "status", "detail"), BARE, ids=[c.name for c, _, _ in BARE])
async def test_bare_statuses_get_generic_details_never_the_upstream_text(
    stack: Stack, account: Account, code: grpc.StatusCode, status: int, detail: str
) -> None:
    stack.ai_standin.abort("ListAnalyses", code, "secret: db at 10.0.0.7, /srv/ai/handler.py:12")
    response = await stack.client.get("/v1/analyses", headers=account.headers)
    body = assert_problem(response, status, code.name)
    assert body["detail"].startswith(detail)
    assert "secret" not in response.text


async def test_an_upstream_crash_is_500_without_its_traceback(
    stack: Stack, account: Account
) -> None:
    stack.ai_standin.fail("ListAnalyses", RuntimeError("secret internal detail at /srv/app.py"))
    response = await stack.client.get(
        "/v1/analyses", headers={**account.headers, "X-Request-ID": "req-crash"}
    )
    assert_problem(response, 500, "INTERNAL", request_id="req-crash")
    assert "secret" not in response.text


async def test_unknown_routes_and_methods_are_problems(stack: Stack) -> None:
    missing = await stack.client.get("/v1/nothing")
    body = assert_problem(missing, 404, "NOT_FOUND")
    assert body["detail"] == "no route matches /v1/nothing"
    wrong = await stack.client.put("/healthz")
    # Errors that reach no service have a code too: what a gRPC server would answer.
    body = assert_problem(wrong, 405, "UNIMPLEMENTED")
    assert body["type"] == "https://tandem.dev/problems/method-not-allowed"
    assert body["title"] == "Method not allowed"
    assert wrong.headers["allow"]


# Request ids


async def test_a_well_formed_request_id_is_kept_everywhere(stack: Stack, account: Account) -> None:
    headers = {**account.headers, "X-Request-ID": "trace-42.a:b-c"}
    ok = await stack.client.post("/v1/analyses", json={"text": "hi"}, headers=headers)
    assert ok.headers["x-request-id"] == "trace-42.a:b-c"
    assert stack.ai_standin.calls_of("AnalyzeText")[0].request_id == "trace-42.a:b-c"
    failed = await stack.client.get("/v1/analyses/x", headers=headers)
    assert_problem(failed, 400, "INVALID_ARGUMENT", request_id="trace-42.a:b-c")


@pytest.mark.parametrize("given", [None, "", "has spaces", "semi;colon", "x" * 200])
async def test_a_missing_or_malformed_request_id_is_replaced(
    stack: Stack, account: Account, given: str | None
) -> None:
    headers = dict(account.headers)
    if given is not None:
        headers["X-Request-ID"] = given
    response = await stack.client.post("/v1/analyses", json={"text": "hi"}, headers=headers)
    echoed = response.headers["x-request-id"]
    assert len(echoed) == 36
    assert echoed != given
    assert stack.ai_standin.calls_of("AnalyzeText")[-1].request_id == echoed


async def test_log_lines_carry_the_request_id(
    sqlite_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    await migrate_users(sqlite_url)
    caplog.set_level(logging.INFO, logger="gateway")
    caplog.handler.addFilter(RequestIdFilter())
    async with gateway_stack(sqlite_url, access_log=True) as stack:
        stack.ai_standin.fail("ListAnalyses", RuntimeError("boom"))
        account = await stack.new_account()
        await stack.client.get("/v1/users/me", headers={**account.headers, "X-Request-ID": "log-1"})
        await stack.client.get("/v1/analyses", headers={**account.headers, "X-Request-ID": "log-2"})
    access = {
        r.request_id: r.getMessage()  # type: ignore[attr-defined]
        for r in caplog.records
        if r.name == "gateway.access"
    }
    assert access["log-1"].startswith("GET /v1/users/me 200 ")
    assert access["log-1"].endswith("ms")
    assert access["log-2"].startswith("GET /v1/analyses 500 ")


async def test_an_unexpected_fault_in_the_gateway_is_a_logged_500(
    stack: Stack, account: Account, caplog: pytest.LogCaptureFixture
) -> None:
    from tandem_protos.ai.v1 import analysis_pb2

    caplog.set_level(logging.ERROR, logger="gateway")
    caplog.handler.addFilter(RequestIdFilter())
    stack.ai_standin.sentiment = analysis_pb2.SENTIMENT_UNSPECIFIED
    response = await stack.client.post(
        "/v1/analyses", json={"text": "hmm"}, headers={**account.headers, "X-Request-ID": "f-1"}
    )
    assert_problem(response, 500, "INTERNAL", request_id="f-1")
    (record,) = [r for r in caplog.records if r.name == "gateway.errors"]
    assert record.exc_info is not None
    assert record.request_id == "f-1"  # type: ignore[attr-defined]


# Body limit (4096 bytes in these tests)


async def test_a_body_over_the_limit_is_413_by_its_content_length(
    stack: Stack, account: Account
) -> None:
    response = await stack.client.post(
        "/v1/analyses", json={"text": "x" * 5000}, headers=account.headers
    )
    body = assert_problem(response, 413, "RESOURCE_EXHAUSTED")
    assert body["type"] == "https://tandem.dev/problems/content-too-large"
    assert body["title"] == "Content too large"
    assert body["detail"] == "the request body exceeds the limit of 4096 bytes"
    assert stack.ai_standin.calls == []


async def test_a_chunked_body_over_the_limit_is_413_before_it_is_read_whole(
    stack: Stack, account: Account
) -> None:
    sent = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal sent
        yield b'{"text": "'
        for _ in range(100):
            sent += 1024
            yield b"x" * 1024
        yield b'"}'

    response = await stack.client.post(
        "/v1/analyses",
        content=chunks(),
        headers={**account.headers, "content-type": "application/json"},
    )
    assert "content-length" not in response.request.headers
    assert_problem(response, 413, "RESOURCE_EXHAUSTED")
    assert stack.ai_standin.calls == []


async def test_a_body_under_the_limit_passes(stack: Stack, account: Account) -> None:
    response = await stack.client.post(
        "/v1/analyses", json={"text": "x" * 3000}, headers=account.headers
    )
    assert response.status_code == 201, response.text


async def test_validation_errors_name_query_path_and_header_fields(
    stack: Stack, account: Account
) -> None:
    response = await stack.client.patch(
        f"/v1/users/{account.id}",
        json={"name": "X"},
        headers={**account.headers, "If-Match": "a, b"},
    )
    assert set(field_errors(assert_problem(response, 400, "INVALID_ARGUMENT"))) == {"if-match"}
    response = await stack.client.patch(
        f"/v1/users/{account.id}",
        json={"name": "X"},
        headers={**account.headers, "If-Match": "x" * 300},
    )
    assert set(field_errors(assert_problem(response, 400, "INVALID_ARGUMENT"))) == {"if-match"}
    response = await stack.client.get(
        "/v1/analyses", params={"page_size": -1}, headers=account.headers
    )
    assert set(field_errors(assert_problem(response, 400, "INVALID_ARGUMENT"))) == {"page_size"}
