"""Upstreams down, slow, or several: 503, 504, /readyz, round-robin and retries."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import httpx
import pytest

from servicekit import errors
from tests.support.ai_standin import AnalysisStandIn, running_ai_standin
from tests.support.gateway import (
    PASSWORD,
    Stack,
    assert_problem,
    closed_port,
    gateway_settings,
    gateway_stack,
    running_gateway,
    silent_server,
    unique_email,
)
from tests.support.servers import migrate_users, running_users, users_settings
from tests.support.tokens import user_bearer

# Deadlines in these tests are short; a response must come within deadline + MARGIN.
DEADLINE = 0.5
MARGIN = 2.5


@pytest.fixture
async def users_db(sqlite_url: str) -> str:
    await migrate_users(sqlite_url)
    return sqlite_url


@pytest.fixture
async def stack(users_db: str) -> AsyncIterator[Stack]:
    async with gateway_stack(users_db) as stack:
        yield stack


async def test_users_down_is_503_problem_quickly() -> None:
    target = f"127.0.0.1:{closed_port()}"
    settings = gateway_settings(target, target)
    async with running_gateway(settings) as url, httpx.AsyncClient(base_url=url) as client:
        body = {"email": unique_email(), "name": "N", "password": PASSWORD}
        response = await client.post("/v1/users", json=body, timeout=10)
        problem = assert_problem(response, 503, "UNAVAILABLE")
        assert problem["detail"] == "the users service is unavailable; retry shortly"
        login = await client.post(
            "/v1/auth/token",
            data={"grant_type": "password", "username": "a@example.com", "password": PASSWORD},
        )
        assert_problem(login, 503, "UNAVAILABLE")


async def test_no_signing_keys_is_503_with_the_time_of_the_next_fetch() -> None:
    target = f"127.0.0.1:{closed_port()}"
    async with (
        running_gateway(gateway_settings(target, target)) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        headers = {"Authorization": user_bearer(str(uuid.uuid4()))}
        response = await client.get("/v1/users/me", headers=headers, timeout=10)
    problem = assert_problem(response, 503, "UNAVAILABLE")
    assert problem["reason"] == "SIGNING_KEYS_UNAVAILABLE"
    # The back-off of a key set never fetched (0.25 s first), in whole seconds.
    assert response.headers["retry-after"] == "1"


async def test_ai_down_is_503_while_users_work(users_db: str) -> None:
    async with running_users(users_settings(users_db)) as users_address:
        settings = gateway_settings(users_address, f"127.0.0.1:{closed_port()}")
        async with running_gateway(settings) as url, httpx.AsyncClient(base_url=url) as client:
            email = unique_email()
            created = await client.post(
                "/v1/users", json={"email": email, "name": "N", "password": PASSWORD}
            )
            assert created.status_code == 201
            token = (
                await client.post(
                    "/v1/auth/token",
                    data={"grant_type": "password", "username": email, "password": PASSWORD},
                )
            ).json()["access_token"]
            headers = {"Authorization": f"Bearer {token}"}
            assert (await client.get("/v1/users/me", headers=headers)).status_code == 200
            response = await client.post("/v1/analyses", json={"text": "hi"}, headers=headers)
            problem = assert_problem(response, 503, "UNAVAILABLE")
            assert problem["detail"] == "the ai service is unavailable; retry shortly"
            streamed = await client.post(
                "/v1/analyses:stream", json={"text": "hi"}, headers=headers
            )
            assert_problem(streamed, 503, "UNAVAILABLE")


async def test_a_silent_users_service_is_504_within_the_deadline() -> None:
    async with silent_server() as target:
        settings = gateway_settings(target, target, users_deadline_seconds=DEADLINE)
        async with running_gateway(settings) as url, httpx.AsyncClient(base_url=url) as client:
            started = time.monotonic()
            response = await client.post(
                "/v1/users",
                json={"email": unique_email(), "name": "N", "password": PASSWORD},
                timeout=30,
            )
            elapsed = time.monotonic() - started
    problem = assert_problem(response, 504, "DEADLINE_EXCEEDED")
    assert problem["detail"] == "the users service did not answer in time"
    assert elapsed < DEADLINE + MARGIN


async def test_a_slow_ai_call_is_504_within_its_deadline(users_db: str) -> None:
    async with gateway_stack(users_db, ai_deadline_seconds=DEADLINE) as stack:
        account = await stack.new_account()
        stack.ai_standin.hold("ListAnalyses")
        started = time.monotonic()
        response = await stack.client.get("/v1/analyses", headers=account.headers, timeout=30)
        elapsed = time.monotonic() - started
    assert_problem(response, 504, "DEADLINE_EXCEEDED")
    assert elapsed < DEADLINE + MARGIN


async def test_a_slow_analysis_gets_its_own_longer_deadline(users_db: str) -> None:
    async with gateway_stack(
        users_db, ai_deadline_seconds=DEADLINE, analysis_deadline_seconds=2 * DEADLINE
    ) as stack:
        account = await stack.new_account()
        stack.ai_standin.hold("AnalyzeText")
        started = time.monotonic()
        response = await stack.client.post(
            "/v1/analyses", json={"text": "hi"}, headers=account.headers, timeout=30
        )
        elapsed = time.monotonic() - started
    assert_problem(response, 504, "DEADLINE_EXCEEDED")
    assert 2 * DEADLINE <= elapsed < 2 * DEADLINE + MARGIN


async def test_readyz_reflects_both_upstreams(users_db: str) -> None:
    async with running_users(users_settings(users_db)) as users_address:
        async with running_ai_standin() as ai:
            settings = gateway_settings(users_address, ai.address)
            async with (
                running_gateway(settings) as url,
                httpx.AsyncClient(base_url=url) as client,
            ):
                ready = await client.get("/readyz")
                assert ready.status_code == 200, ready.text
                assert ready.json() == {
                    "status": "ready",
                    "upstreams": {"users": "SERVING", "ai": "SERVING"},
                }
                await ai.set_serving(False)
                not_serving = await client.get("/readyz")
                body = assert_problem(not_serving, 503, "UNAVAILABLE")
                assert body["detail"] == "not ready: ai is NOT_SERVING"
                await ai.set_serving(True)
                assert (await client.get("/readyz")).status_code == 200
        # The ai server is gone now.
        async with running_gateway(settings) as url, httpx.AsyncClient(base_url=url) as client:
            gone = await client.get("/readyz")
            body = assert_problem(gone, 503, "UNAVAILABLE")
            assert body["detail"] == "not ready: ai is UNAVAILABLE"
            assert (await client.get("/healthz")).json() == {"status": "ok"}
    both = gateway_settings(f"127.0.0.1:{closed_port()}", f"127.0.0.1:{closed_port()}")
    async with running_gateway(both) as url, httpx.AsyncClient(base_url=url) as client:
        body = assert_problem(await client.get("/readyz"), 503, "UNAVAILABLE")
        assert body["detail"] == "not ready: users is UNAVAILABLE, ai is UNAVAILABLE"


async def test_a_silent_upstream_makes_readyz_503_within_its_deadline() -> None:
    async with silent_server() as target:
        settings = gateway_settings(target, target, ready_deadline_seconds=DEADLINE)
        async with running_gateway(settings) as url, httpx.AsyncClient(base_url=url) as client:
            started = time.monotonic()
            response = await client.get("/readyz", timeout=30)
            elapsed = time.monotonic() - started
    body = assert_problem(response, 503, "UNAVAILABLE")
    assert body["detail"] == "not ready: users is DEADLINE_EXCEEDED, ai is DEADLINE_EXCEEDED"
    assert elapsed < DEADLINE + MARGIN


async def test_idempotent_calls_are_retried_on_unavailable(stack: Stack) -> None:
    account = await stack.new_account()
    stack.ai_standin.fail("ListAnalyses", errors.Unavailable("restarting"), times=1)
    response = await stack.client.get("/v1/analyses", headers=account.headers)
    assert response.status_code == 200, response.text
    assert len(stack.ai_standin.calls_of("ListAnalyses")) == 2


async def test_calls_that_change_state_are_not_retried(stack: Stack) -> None:
    account = await stack.new_account()
    stack.ai_standin.fail("AnalyzeText", errors.Unavailable("restarting"), times=1)
    response = await stack.client.post("/v1/analyses", json={"text": "hi"}, headers=account.headers)
    assert_problem(response, 503, "UNAVAILABLE")
    assert len(stack.ai_standin.calls_of("AnalyzeText")) == 1


async def test_replicas_share_the_load_and_one_dying_does_not_fail_reads(users_db: str) -> None:
    one = AnalysisStandIn()
    two = AnalysisStandIn(analyses=one.analyses)  # replicas of one store
    async with (
        running_users(users_settings(users_db)) as users_address,
        running_ai_standin(one) as first,
        running_ai_standin(two) as second,
    ):
        target = f"ipv4:{first.address},{second.address}"
        async with gateway_stack_on(users_address, target) as (client, headers):
            made = await client.post("/v1/analyses", json={"text": "hi"}, headers=headers)
            path = f"/v1/analyses/{made.json()['id']}"
            for _ in range(20):
                response = await client.get(path, headers=headers)
                assert response.status_code == 200, response.text
            # round_robin: both replicas served some of the reads.
            assert one.calls_of("GetAnalysis")
            assert two.calls_of("GetAnalysis")
            await second.server.stop(0)
            served_by_one = len(one.calls_of("GetAnalysis"))
            for _ in range(20):
                response = await client.get(path, headers=headers)
                assert response.status_code == 200, response.text
            assert len(one.calls_of("GetAnalysis")) == served_by_one + 20


@asynccontextmanager
async def gateway_stack_on(
    users_address: str, ai_target: str
) -> AsyncIterator[tuple[httpx.AsyncClient, dict[str, str]]]:
    """A gateway on these targets, a client, and a signed-up user's auth headers."""
    settings = gateway_settings(users_address, ai_target)
    async with (
        running_gateway(settings) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as client,
    ):
        email = unique_email()
        await client.post("/v1/users", json={"email": email, "name": "N", "password": PASSWORD})
        login = await client.post(
            "/v1/auth/token",
            data={"grant_type": "password", "username": email, "password": PASSWORD},
        )
        yield client, {"Authorization": f"Bearer {login.json()['access_token']}"}
