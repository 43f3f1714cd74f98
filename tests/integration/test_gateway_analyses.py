"""The analysis routes end to end, against the AnalysisService stand-in
(tests/support/ai_standin.py)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from servicekit import errors
from tandem_protos.ai.v1 import analysis_pb2
from tests.support.gateway import (
    ANALYSIS_FIELDS,
    Account,
    Stack,
    assert_problem,
    field_errors,
    first_event,
    gateway_stack,
    read_events,
)
from tests.support.servers import migrate_users


@pytest.fixture
async def stack(sqlite_url: str) -> AsyncIterator[Stack]:
    await migrate_users(sqlite_url)
    async with gateway_stack(sqlite_url) as stack:
        yield stack


@pytest.fixture
async def account(stack: Stack) -> Account:
    return await stack.new_account()


async def analyse(stack: Stack, account: Account, text: str = "A fine day.") -> dict[str, object]:
    response = await stack.client.post("/v1/analyses", json={"text": text}, headers=account.headers)
    assert response.status_code == 201, response.text
    made: dict[str, object] = response.json()
    return made


async def test_create_analysis_answers_201_owned_by_the_caller(
    stack: Stack, account: Account
) -> None:
    response = await stack.client.post(
        "/v1/analyses",
        json={"text": "What a lovely morning."},
        headers={**account.headers, "X-Request-ID": "req-analyse-1"},
    )
    assert response.status_code == 201, response.text
    made = response.json()
    assert set(made) == ANALYSIS_FIELDS
    assert made["user_id"] == account.id
    assert made["sentiment"] == "positive"
    assert made["summary"] == "What a lovely morning."
    assert 0 <= made["confidence"] <= 1
    assert response.headers["location"] == f"/v1/analyses/{made['id']}"
    assert response.headers["x-request-id"] == "req-analyse-1"
    (call,) = stack.ai_standin.calls_of("AnalyzeText")
    # The ai service acts for the caller's own token: the gateway names no user.
    assert call.request.user_id == ""
    assert call.authorization == f"Bearer {account.token}"
    assert call.request.text == "What a lovely morning."
    # The request id travels upstream as gRPC metadata.
    assert call.request_id == "req-analyse-1"


@pytest.mark.parametrize(("body", "field"), [({}, "text"), ({"text": ""}, "text"), ([], "body")])
async def test_invalid_analysis_bodies_are_400(
    stack: Stack, account: Account, body: object, field: str
) -> None:
    response = await stack.client.post("/v1/analyses", json=body, headers=account.headers)
    assert set(field_errors(assert_problem(response, 400, "INVALID_ARGUMENT"))) == {field}
    assert stack.ai_standin.calls == []


async def test_the_ai_services_field_violations_become_errors(
    stack: Stack, account: Account
) -> None:
    response = await stack.client.post(
        "/v1/analyses", json={"text": "   \n  "}, headers=account.headers
    )
    body = assert_problem(response, 400, "INVALID_ARGUMENT")
    assert field_errors(body) == {"text": "must not be blank"}
    assert body["detail"] == "text: must not be blank"


async def test_get_own_analysis(stack: Stack, account: Account) -> None:
    made = await analyse(stack, account)
    response = await stack.client.get(f"/v1/analyses/{made['id']}", headers=account.headers)
    assert response.status_code == 200, response.text
    assert response.json() == made


async def test_another_users_analysis_is_404_like_an_unknown_one(
    stack: Stack, account: Account
) -> None:
    made = await analyse(stack, account)
    other = await stack.new_account()
    foreign = await stack.client.get(f"/v1/analyses/{made['id']}", headers=other.headers)
    unknown_id = uuid.uuid4()
    unknown = await stack.client.get(f"/v1/analyses/{unknown_id}", headers=other.headers)
    foreign_body = assert_problem(foreign, 404, "NOT_FOUND")
    unknown_body = assert_problem(unknown, 404, "NOT_FOUND")
    assert foreign_body["detail"] == f"no analysis {made['id']}"
    assert unknown_body["detail"] == f"no analysis {unknown_id}"
    assert {k for k in foreign_body if foreign_body[k] != unknown_body[k]} == {
        "detail",
        "request_id",
    }
    bad = await stack.client.get("/v1/analyses/not-a-uuid", headers=other.headers)
    assert set(field_errors(assert_problem(bad, 400, "INVALID_ARGUMENT"))) == {"id"}


async def test_list_analyses_gives_the_callers_own_newest_first_in_pages(
    stack: Stack, account: Account
) -> None:
    other = await stack.new_account()
    mine = [(await analyse(stack, account, f"text {i}"))["id"] for i in range(5)]
    await analyse(stack, other, "not yours")
    seen: list[object] = []
    token = ""
    while True:
        params: dict[str, str | int] = {"page_size": 2, **({"page_token": token} if token else {})}
        response = await stack.client.get("/v1/analyses", params=params, headers=account.headers)
        assert response.status_code == 200, response.text
        page = response.json()
        assert set(page) == {"analyses", "next_page_token"}
        seen += [a["id"] for a in page["analyses"]]
        token = page["next_page_token"]
        if not token:
            break
    assert seen == list(reversed(mine))
    listed = stack.ai_standin.calls_of("ListAnalyses")
    assert {(c.request.user_id, c.authorization) for c in listed} == {
        ("", f"Bearer {account.token}")
    }


# Streaming


async def test_stream_relays_partials_then_the_analysis_then_done(
    stack: Stack, account: Account
) -> None:
    async with stack.client.stream(
        "POST", "/v1/analyses:stream", json={"text": "Sunny."}, headers=account.headers
    ) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        assert response.headers["x-request-id"]
        events = await read_events(response)
    assert [e.name for e in events] == ["partial", "partial", "analysis", "done"]
    assert events[0].data == {"summary": "A short", "sentiment": None, "key_points": []}
    assert events[1].data == {
        "summary": "A short text.",
        "sentiment": "positive",
        "key_points": ["short"],
    }
    final = events[2].data
    assert set(final) == ANALYSIS_FIELDS
    assert final["user_id"] == account.id
    assert events[3].data == {}
    # The analysis is stored: it can be read back.
    stored = await stack.client.get(f"/v1/analyses/{final['id']}", headers=account.headers)
    assert stored.json() == final


async def test_stream_errors_before_the_first_event_are_problem_responses(
    stack: Stack, account: Account
) -> None:
    invalid = await stack.client.post(
        "/v1/analyses:stream", json={"text": "  "}, headers=account.headers
    )
    assert field_errors(assert_problem(invalid, 400, "INVALID_ARGUMENT")) == {
        "text": "must not be blank"
    }
    stack.ai_standin.fail("StreamAnalyzeText", errors.ResourceExhausted("slow down", retry_after=7))
    busy = await stack.client.post(
        "/v1/analyses:stream", json={"text": "hi"}, headers=account.headers
    )
    assert assert_problem(busy, 429, "RESOURCE_EXHAUSTED")["detail"] == "slow down"
    assert busy.headers["retry-after"] == "7"


async def test_stream_error_after_the_first_event_is_an_error_event_then_done(
    stack: Stack, account: Account
) -> None:
    stack.ai_standin.fail_stream(errors.Unavailable("the model provider is down"))
    async with stack.client.stream(
        "POST", "/v1/analyses:stream", json={"text": "Sunny."}, headers=account.headers
    ) as response:
        assert response.status_code == 200
        events = await read_events(response)
    assert [e.name for e in events] == ["partial", "partial", "error", "done"]
    problem = events[2].data
    assert problem["status"] == 503
    assert problem["code"] == "UNAVAILABLE"
    assert problem["detail"] == "the model provider is down"
    assert problem["request_id"] == response.headers["x-request-id"]


async def test_stream_past_its_deadline_ends_with_a_504_error_event(sqlite_url: str) -> None:
    await migrate_users(sqlite_url)
    async with gateway_stack(sqlite_url, stream_deadline_seconds=0.5) as stack:
        account = await stack.new_account()
        stack.ai_standin.hold_stream()
        async with stack.client.stream(
            "POST", "/v1/analyses:stream", json={"text": "Sunny."}, headers=account.headers
        ) as response:
            events = await read_events(response)
    assert [e.name for e in events] == ["partial", "partial", "error", "done"]
    assert events[2].data["status"] == 504
    assert events[2].data["code"] == "DEADLINE_EXCEEDED"


async def test_closing_the_stream_cancels_the_upstream_call(stack: Stack, account: Account) -> None:
    stack.ai_standin.hold_stream()
    async with stack.client.stream(
        "POST", "/v1/analyses:stream", json={"text": "Sunny."}, headers=account.headers
    ) as response:
        assert (await first_event(response)).name == "partial"
    # Leaving the block closes the connection; the stand-in must see its call cancelled.
    async with asyncio.timeout(10):
        await stack.ai_standin.stream_cancelled.wait()


async def test_an_analysis_that_breaks_the_contract_is_a_500_without_internals(
    stack: Stack, account: Account
) -> None:
    stack.ai_standin.sentiment = analysis_pb2.SENTIMENT_UNSPECIFIED
    response = await stack.client.post(
        "/v1/analyses", json={"text": "hmm"}, headers={**account.headers, "X-Request-ID": "r-500"}
    )
    body = assert_problem(response, 500, "INTERNAL", request_id="r-500")
    assert body["detail"] == "an unexpected error occurred; quote the request id to report it"
    assert body["type"] == "https://tandem.dev/problems/internal"
