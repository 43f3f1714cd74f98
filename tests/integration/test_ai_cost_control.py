"""Cost control through a real ai server against the fake Messages API: prompt caching
that hits, the token pre-check, and the model chain."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc
import pytest

from ai_service.budget import TEXT_TOO_MANY_TOKENS
from ai_service.domain import Usage
from ai_service.metrics import Metrics
from ai_service.pricing import Prices
from ai_service.prompt_examples import EXAMPLES
from tandem_protos.ai.v1 import analysis_pb2, analysis_pb2_grpc
from tests.support.fake_anthropic import COUNT_TOKENS_PATH, MESSAGES_PATH, FakeAnthropic, Reply
from tests.support.rpc import reason, rpc_error, violations
from tests.support.servers import ai_settings, channel_to, running_ai

# A valid answer: the prompt's first worked example.
GOOD = EXAMPLES[0][1]
Stub = Any


@pytest.fixture(autouse=True)
def answering(fake: FakeAnthropic) -> None:
    fake.set_default(Reply.json_output(GOOD))


@asynccontextmanager
async def stub_for(
    database_url: str, metrics: Metrics | None = None, **overrides: Any
) -> AsyncIterator[Stub]:
    values: dict[str, Any] = {"anthropic_max_retries": 0, **overrides}
    async with (
        running_ai(ai_settings(database_url, **values), metrics) as address,
        channel_to(address) as channel,
    ):
        yield analysis_pb2_grpc.AnalysisServiceStub(channel)


def request(text: str) -> Any:
    return analysis_pb2.AnalyzeTextRequest(text=text, user_id=str(uuid.uuid4()))


async def stream(stub: Stub, text: str) -> list[Any]:
    return [chunk async for chunk in stub.StreamAnalyzeText(request(text))]


# --- prompt caching ---------------------------------------------------------------------


async def test_the_prompt_is_cached_from_the_second_call_on(
    ai_sqlite_db: str, fake: FakeAnthropic
) -> None:
    metrics = Metrics()
    model = "claude-sonnet-5-5"
    async with stub_for(ai_sqlite_db, metrics, models=(model,)) as stub:
        first = await stub.AnalyzeText(request("The motor is great. The noise is awful."))
        second = await stub.AnalyzeText(request("Lovely colour, terrible battery."))
        streamed = (await stream(stub, "Fast shipping, broken on arrival."))[-1].analysis
    assert first.usage.cache_creation_input_tokens > 1024
    assert first.usage.cache_read_input_tokens == 0
    for later in (second, streamed):
        assert later.usage.cache_creation_input_tokens == 0
        assert later.usage.cache_read_input_tokens == first.usage.cache_creation_input_tokens
    prefix = first.usage.cache_creation_input_tokens
    assert metrics.value("tandem_ai_tokens", model=model, kind="cache_read") == 2 * prefix
    assert metrics.value("tandem_ai_tokens", model=model, kind="cache_creation") == prefix
    # Two reads saved 90 % of the prefix's price each; the write cost 25 % more.
    cost = metrics.value("tandem_ai_cost_usd", model=model)
    uncached = metrics.value("tandem_ai_cost_uncached_usd", model=model)
    prices = Prices()
    assert cost == pytest.approx(
        sum(prices.cost(_usage(a)) for a in (first, second, streamed)), rel=1e-6
    )
    saved = prefix * (2 * (1 - 0.1) - 0.25) * prices.input_per_mtok / 1_000_000
    assert uncached - cost == pytest.approx(saved, rel=1e-6)


def _usage(analysis: Any) -> Usage:
    u = analysis.usage
    return Usage(
        u.input_tokens, u.output_tokens, u.cache_read_input_tokens, u.cache_creation_input_tokens
    )


# --- the token pre-check -------------------------------------------------------------------


async def test_a_text_over_the_token_budget_is_refused_before_any_paid_call(
    ai_sqlite_db: str, fake: FakeAnthropic
) -> None:
    async with stub_for(ai_sqlite_db, max_input_tokens=12_000, max_text_chars=250_000) as stub:
        # Cheaply within the budget: neither counted nor refused.
        await stub.AnalyzeText(request("Short and sweet."))
        assert fake.requests_to(COUNT_TOKENS_PATH) == []
        # Near the limit: counted, then refused (the fake counts ~4 characters a token).
        near = "word " * 8000
        for call in (stub.AnalyzeText(request(near)), _collect(stub, near)):
            error = await rpc_error(call)
            assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert reason(error) == TEXT_TOO_MANY_TOKENS
            assert "at most 12000" in violations(error)["text"]
        assert len(fake.requests_to(COUNT_TOKENS_PATH)) == 2
        # Far beyond it: refused on its length alone, without counting.
        error = await rpc_error(stub.AnalyzeText(request("x" * 200_000)))
        assert reason(error) == TEXT_TOO_MANY_TOKENS
        assert len(fake.requests_to(COUNT_TOKENS_PATH)) == 2
        # Near the limit but within it: counted, then analysed.
        fits = "word " * 6000
        await stub.AnalyzeText(request(fits))
    counted = fake.requests_to(COUNT_TOKENS_PATH)
    assert len(counted) == 3
    sent = fake.requests_to(MESSAGES_PATH)
    assert len(sent) == 2
    # The count is of exactly what the analysis sends.
    assert counted[-1].json["system"] == sent[-1].json["system"]
    assert counted[-1].json["messages"] == sent[-1].json["messages"]


async def test_the_context_window_bounds_the_budget_too(
    ai_sqlite_db: str, fake: FakeAnthropic
) -> None:
    fake.enqueue(Reply.token_count(2500), path=COUNT_TOKENS_PATH)
    async with stub_for(
        ai_sqlite_db, context_window_tokens=3000, max_output_tokens=1000, max_input_tokens=10**6
    ) as stub:
        error = await rpc_error(stub.AnalyzeText(request("word " * 300)))
    assert "at most 2000" in violations(error)["text"]
    assert fake.requests_to(MESSAGES_PATH) == []


async def _collect(stub: Stub, text: str) -> list[Any]:
    return await stream(stub, text)


# --- the model chain -----------------------------------------------------------------------


async def test_an_overloaded_model_hands_the_call_to_the_next(
    ai_sqlite_db: str, fake: FakeAnthropic
) -> None:
    fake.set_default(Reply.overloaded(), model="claude-a")
    metrics = Metrics()
    async with stub_for(ai_sqlite_db, metrics, models=("claude-a", "claude-b")) as stub:
        answered = await stub.AnalyzeText(request("The motor is great."))
        streamed = (await stream(stub, "The noise is awful."))[-1].analysis
    assert answered.model == streamed.model == "claude-b"
    assert [r.json["model"] for r in fake.requests_to(MESSAGES_PATH)] == [
        "claude-a",
        "claude-b",
    ] * 2
    assert metrics.value("tandem_ai_fallbacks", primary="claude-a", fallback="claude-b") == 2
    assert metrics.value("tandem_ai_upstream_failures", model="claude-a", code="UNAVAILABLE") == 2


async def test_after_the_last_model_the_offline_fallback_answers(
    ai_sqlite_db: str, fake: FakeAnthropic
) -> None:
    for model in ("claude-a", "claude-b"):
        fake.set_default(Reply.overloaded(), model=model)
    async with stub_for(ai_sqlite_db, models=("claude-a", "claude-b"), fallback="offline") as stub:
        answered = await stub.AnalyzeText(request("I love this phone."))
        without = "claude-a,claude-b"
    assert answered.model.endswith("(fallback from claude-a)")
    assert answered.sentiment == analysis_pb2.SENTIMENT_POSITIVE
    assert [r.json["model"] for r in fake.requests_to(MESSAGES_PATH)] == without.split(",")
    # Without the fallback the last model's failure is the answer.
    async with stub_for(ai_sqlite_db, models=("claude-a", "claude-b")) as stub:
        error = await rpc_error(stub.AnalyzeText(request("I love this phone too.")))
    assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert reason(error) == "PROVIDER_UNAVAILABLE"


async def test_a_configuration_error_does_not_move_down_the_chain(
    ai_sqlite_db: str, fake: FakeAnthropic
) -> None:
    fake.set_default(Reply.error(404, "not_found_error", "model: claude-a"), model="claude-a")
    async with stub_for(ai_sqlite_db, models=("claude-a", "claude-b"), fallback="offline") as stub:
        error = await rpc_error(stub.AnalyzeText(request("Anything.")))
    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "AI_MODELS" in str(error.details())
    assert [r.json["model"] for r in fake.requests_to(MESSAGES_PATH)] == ["claude-a"]


async def test_a_spent_deadline_asks_no_further_model(
    ai_sqlite_db: str, fake: FakeAnthropic
) -> None:
    fake.set_default(Reply.slow(30, then=Reply.json_output(GOOD)), model="claude-a")
    async with stub_for(
        ai_sqlite_db, models=("claude-a", "claude-b"), anthropic_timeout_seconds=30
    ) as stub:
        error = await rpc_error(stub.AnalyzeText(request("Slow."), timeout=1.0))
    assert error.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert [r.json["model"] for r in fake.requests_to(MESSAGES_PATH)] == ["claude-a"]
