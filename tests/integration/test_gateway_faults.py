"""Overload and clients that leave, through the whole chain (users server, ai stand-in,
gateway on real ports): the cap on requests in flight, and a disconnect that cancels
the upstream call on a plain (not streamed) route."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest

from tests.support.gateway import Account, Stack, assert_problem, gateway_stack
from tests.support.rawhttp import raw_connection, request_head
from tests.support.servers import migrate_users

MAX_IN_FLIGHT = 2


@pytest.fixture
async def stack(sqlite_url: str) -> AsyncIterator[Stack]:
    await migrate_users(sqlite_url)
    async with gateway_stack(sqlite_url, max_in_flight=MAX_IN_FLIGHT, access_log=True) as stack:
        yield stack


@pytest.fixture
async def account(stack: Stack) -> Account:
    return await stack.new_account()


async def held_analysis(stack: Stack, account: Account) -> asyncio.Task[httpx.Response]:
    """A POST /v1/analyses that the stand-in holds; returns once the stand-in has it."""
    stack.ai_standin.analyze_started.clear()
    call = stack.client.post("/v1/analyses", json={"text": "Slow."}, headers=account.headers)
    task = asyncio.create_task(call)
    async with asyncio.timeout(10):
        await stack.ai_standin.analyze_started.wait()
    return task


async def test_past_the_cap_requests_are_refused_at_once_while_health_answers(
    stack: Stack, account: Account
) -> None:
    stack.ai_standin.hold("AnalyzeText")
    held = [await held_analysis(stack, account) for _ in range(MAX_IN_FLIGHT)]

    async with asyncio.timeout(2):  # at once, not at any deadline
        refused = await stack.client.get("/v1/users/me", headers=account.headers)
    body = assert_problem(refused, 503, "UNAVAILABLE")
    assert body["reason"] == "TOO_MANY_REQUESTS_IN_FLIGHT"
    assert refused.headers["retry-after"] == "1"
    assert (await stack.client.get("/healthz")).status_code == 200
    assert (await stack.client.get("/readyz")).status_code == 200

    stack.ai_standin.release()
    for task in held:
        assert (await task).status_code == 201
    # Below the cap again.
    assert (await stack.client.get("/v1/users/me", headers=account.headers)).status_code == 200


async def test_a_client_that_gives_up_cancels_its_analysis_upstream(
    stack: Stack, account: Account
) -> None:
    stack.ai_standin.hold("AnalyzeText")
    body = b'{"text": "Never mind."}'
    head = request_head(
        "POST",
        "/v1/analyses",
        ("Authorization", account.headers["Authorization"]),
        ("Content-Type", "application/json"),
        ("Content-Length", str(len(body))),
    )
    async with raw_connection(stack.url) as conn:
        conn.writer.write(head + body)
        async with asyncio.timeout(10):
            await stack.ai_standin.analyze_started.wait()
    # The connection is closed: the gateway must cancel the call, not wait it out.
    async with asyncio.timeout(10):
        await stack.ai_standin.analyze_cancelled.wait()
    stack.ai_standin.release()
    assert stack.ai_standin.analyses == {}
    # The cap counts it no longer.
    for _ in range(MAX_IN_FLIGHT + 1):
        assert (await stack.client.get("/healthz")).status_code == 200
        me = await stack.client.get("/v1/users/me", headers=account.headers)
        assert me.status_code == 200
