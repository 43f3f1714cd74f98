"""The fake's Message Batches endpoints against the real SDK's ``messages.batches``."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import anthropic
import pytest

from tests.support.fake_anthropic import FakeAnthropic, Reply
from tests.support.fake_batches import BATCHES_PATH

MODEL = "claude-sonnet-5-5"


@pytest.fixture
def fake() -> Iterator[FakeAnthropic]:
    with FakeAnthropic() as server:
        yield server


def client_for(fake: FakeAnthropic) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(
        base_url=fake.url, api_key=fake.api_key, max_retries=0, timeout=5.0
    )


def request(custom_id: str, text: str = "Hello") -> Any:
    return {
        "custom_id": custom_id,
        "params": {
            "model": MODEL,
            "max_tokens": 64,
            "messages": [{"role": "user", "content": text}],
        },
    }


async def test_a_batch_runs_until_it_ends_then_serves_its_results_by_custom_id(
    fake: FakeAnthropic,
) -> None:
    fake.enqueue(Reply.json_output({"summary": "a"}), Reply.overloaded())
    async with client_for(fake) as client:
        created = await client.messages.batches.create(
            requests=[request("a"), request("b"), request("c")]
        )
        assert created.id.startswith("msgbatch_")
        assert created.processing_status == "in_progress"
        assert created.request_counts.processing == 3
        assert created.results_url is None
        assert (created.expires_at - created.created_at).total_seconds() == 24 * 3600

        polled = await client.messages.batches.retrieve(created.id)
        assert (polled.processing_status, polled.request_counts.processing) == ("in_progress", 3)

        fake.batches.end(created.id, expire=["c"])
        ended = await client.messages.batches.retrieve(created.id)
        assert ended.processing_status == "ended"
        assert ended.ended_at is not None
        counts = ended.request_counts
        assert (counts.processing, counts.succeeded, counts.errored, counts.expired) == (0, 1, 1, 1)
        results = [r async for r in await client.messages.batches.results(created.id)]
    # In no set order (here reversed): a client matches them by custom_id.
    assert [r.custom_id for r in results] == ["c", "b", "a"]
    by_id = {r.custom_id: r.result for r in results}
    succeeded = by_id["a"]
    assert succeeded.type == "succeeded"
    assert succeeded.message.content[0].type == "text"
    assert succeeded.message.usage.service_tier == "batch"
    errored = by_id["b"]
    assert errored.type == "errored"
    assert errored.error.error.type == "overloaded_error"
    assert by_id["c"].type == "expired"


async def test_a_cancelled_batch_ends_with_its_unanswered_requests_canceled(
    fake: FakeAnthropic,
) -> None:
    async with client_for(fake) as client:
        created = await client.messages.batches.create(requests=[request("x"), request("y")])
        cancelling = await client.messages.batches.cancel(created.id)
        assert cancelling.processing_status == "canceling"
        assert cancelling.cancel_initiated_at is not None
        ended = await client.messages.batches.retrieve(created.id)
        assert ended.processing_status == "ended"
        assert ended.request_counts.canceled == 2
        results = [r async for r in await client.messages.batches.results(created.id)]
    assert {r.custom_id: r.result.type for r in results} == {"x": "canceled", "y": "canceled"}


async def test_end_after_polls_ends_a_batch_on_its_nth_retrieve(fake: FakeAnthropic) -> None:
    fake.batches.end_after_polls = 2
    fake.set_default(Reply.json_output({"summary": "ok"}))
    async with client_for(fake) as client:
        created = await client.messages.batches.create(requests=[request("a")])
        first = await client.messages.batches.retrieve(created.id)
        second = await client.messages.batches.retrieve(created.id)
    assert (first.processing_status, second.processing_status) == ("in_progress", "ended")
    assert second.results_url == f"{fake.url}{BATCHES_PATH}/{created.id}/results"


@pytest.mark.parametrize(
    ("requests", "problem"),
    [
        ([], "at least one request"),
        ([request("a"), request("a")], "duplicate custom_id"),
        ([request("no spaces")], "custom_id"),
        ([{"custom_id": "a", "params": {"model": MODEL, "messages": []}}], "max_tokens"),
    ],
)
async def test_bad_batches_are_refused_like_the_api_does(
    fake: FakeAnthropic, requests: list[Any], problem: str
) -> None:
    async with client_for(fake) as client:
        with pytest.raises(anthropic.BadRequestError) as raised:
            await client.messages.batches.create(requests=requests)
    assert problem in str(raised.value.message)
    assert fake.batches.ids == []


async def test_unknown_batches_and_early_results_are_errors(fake: FakeAnthropic) -> None:
    async with client_for(fake) as client:
        with pytest.raises(anthropic.NotFoundError):
            await client.messages.batches.retrieve("msgbatch_nope")
        created = await client.messages.batches.create(requests=[request("a")])
        with pytest.raises(anthropic.AnthropicError, match="results_url"):
            await client.messages.batches.results(created.id)
    # The key is checked on batch routes as on messages.
    wrong = anthropic.AsyncAnthropic(base_url=fake.url, api_key="wrong", max_retries=0)
    async with wrong:
        with pytest.raises(anthropic.AuthenticationError):
            await wrong.messages.batches.retrieve(created.id)
