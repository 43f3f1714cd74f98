"""The batch routes end to end: gateway -> real ai service (offline, and Claude through
the fake's Message Batches) and real users service."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import httpx

from gateway.schemas import Operation
from tests.integration.test_gateway_real_ai import account, real_chain
from tests.support.fake_anthropic import FakeAnthropic
from tests.support.fake_batches import BATCHES_PATH
from tests.support.gateway import ANALYSIS_FIELDS, assert_problem, field_errors

OPERATION_FIELDS = {"name", "id", "done", "metadata", "response", "error"}
TEXTS = [
    "What a wonderful phone. The battery lasts forever.",
    "Awful. It broke in a day.",
]


async def until_done(client: httpx.AsyncClient, location: str, headers: Any) -> dict[str, Any]:
    """Polls the operation as a REST client does (there is no event to await over HTTP)."""
    for _ in range(400):
        polled = await client.get(location, headers=headers)
        assert polled.status_code == 200, polled.text
        body: dict[str, Any] = polled.json()
        if body["done"]:
            return body
        await asyncio.sleep(0.05)
    raise AssertionError(f"{location} did not finish: {body}")


async def test_a_batch_through_the_gateway(database_url: str) -> None:
    async with real_chain(database_url) as client:
        me, other = await account(client), await account(client)
        started = await client.post(
            "/v1/analyses:batchAnalyze", json={"texts": TEXTS}, headers=me.headers
        )
        assert started.status_code == 202, started.text
        body = started.json()
        assert set(body) == OPERATION_FIELDS
        Operation.model_validate(body)
        assert body["name"] == f"operations/{body['id']}"
        assert started.headers["location"] == f"/v1/operations/{body['id']}"
        assert body["metadata"]["total_count"] == 2
        assert body["metadata"]["user_id"] == me.id

        done = await until_done(client, started.headers["location"], me.headers)
        Operation.model_validate(done)
        assert done["error"] is None
        results = done["response"]["results"]
        assert [r["error"] for r in results] == [None, None]
        assert all(set(r["analysis"]) == ANALYSIS_FIELDS for r in results)
        assert [r["analysis"]["sentiment"] for r in results] == ["positive", "negative"]
        assert done["metadata"]["succeeded_count"] == 2
        fetched = await client.get(
            f"/v1/analyses/{results[0]['analysis']['id']}", headers=me.headers
        )
        assert fetched.json() == results[0]["analysis"]

        # Another user's operation is as unknown as a made-up one.
        for response in (
            await client.get(started.headers["location"], headers=other.headers),
            await client.post(f"/v1/operations/{body['id']}:cancel", headers=other.headers),
            await client.get(f"/v1/operations/{uuid.uuid4()}", headers=me.headers),
        ):
            assert_problem(response, 404, "NOT_FOUND")
        assert_problem(await client.get(started.headers["location"]), 401, "UNAUTHENTICATED")

        listed = await client.get("/v1/operations", headers=me.headers)
        assert [o["id"] for o in listed.json()["operations"]] == [body["id"]]
        assert (await client.get("/v1/operations", headers=other.headers)).json() == {
            "operations": [],
            "next_page_token": "",
        }


async def test_bad_batches_are_problems_naming_the_text(database_url: str) -> None:
    async with real_chain(database_url, batch_max_texts=3) as client:
        me = await account(client)
        blank = await client.post(
            "/v1/analyses:batchAnalyze", json={"texts": ["Fine.", "   "]}, headers=me.headers
        )
        problem = assert_problem(blank, 400, "INVALID_ARGUMENT")
        assert field_errors(problem) == {"texts[1]": "must not be blank"}
        many = await client.post(
            "/v1/analyses:batchAnalyze", json={"texts": ["Fine."] * 4}, headers=me.headers
        )
        assert field_errors(assert_problem(many, 400, "INVALID_ARGUMENT")) == {
            "texts": "must hold at most 3 texts"
        }
        none = await client.post(
            "/v1/analyses:batchAnalyze", json={"texts": []}, headers=me.headers
        )
        assert none.status_code == 400, none.text


async def test_an_idempotency_key_answers_the_first_batch(database_url: str) -> None:
    async with real_chain(database_url) as client:
        me = await account(client)
        headers = {**me.headers, "Idempotency-Key": str(uuid.uuid4())}
        first = await client.post(
            "/v1/analyses:batchAnalyze", json={"texts": TEXTS}, headers=headers
        )
        again = await client.post(
            "/v1/analyses:batchAnalyze", json={"texts": TEXTS}, headers=headers
        )
        assert (first.status_code, again.status_code) == (202, 202)
        assert again.json()["id"] == first.json()["id"]
        other = await client.post(
            "/v1/analyses:batchAnalyze", json={"texts": TEXTS[:1]}, headers=headers
        )
        assert_problem(other, 422, "FAILED_PRECONDITION")


async def test_cancelling_a_claude_batch_through_the_gateway(
    sqlite_url: str, fake: FakeAnthropic
) -> None:
    fast = {"model": "claude-test-model", "batch_poll_seconds": 0.05, "batch_poll_max_seconds": 0.1}
    async with real_chain(sqlite_url, **fast) as client:
        me = await account(client)
        started = await client.post(
            "/v1/analyses:batchAnalyze", json={"texts": TEXTS}, headers=me.headers
        )
        assert started.status_code == 202, started.text
        operation_id = started.json()["id"]
        (created,) = await fake.wait_for_requests_async(1, timeout=10, path=BATCHES_PATH)
        assert await created.wait_completed(10)
        batch_id = fake.batches.ids[0]
        await fake.wait_for_requests_async(1, timeout=10, path=f"{BATCHES_PATH}/{batch_id}")

        cancelled = await client.post(f"/v1/operations/{operation_id}:cancel", headers=me.headers)
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["metadata"]["cancel_requested"] is True
        assert cancelled.json()["metadata"]["provider_batch_ids"] == [batch_id]
        done = await until_done(client, f"/v1/operations/{operation_id}", me.headers)
    Operation.model_validate(done)
    assert done["response"] is None
    assert (done["error"]["code"], done["error"]["status"]) == (1, "CANCELLED")
    assert [r["error"]["reason"] for r in done["error"]["results"]] == ["OPERATION_CANCELLED"] * 2
    assert fake.batches.status(batch_id) == "ended"
