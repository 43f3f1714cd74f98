"""BatchAnalyzeTexts with Claude: a real ai server, the real SDK, the fake's Message
Batches endpoints (tests.support.fake_batches)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
from google.longrunning import operations_pb2, operations_pb2_grpc
from google.protobuf import duration_pb2
from google.rpc import error_details_pb2

from ai_service.metrics import Metrics
from ai_service.prompt import OUTPUT_SCHEMA, SYSTEM_PROMPT
from tandem_protos.ai.v1 import analysis_pb2, analysis_pb2_grpc
from tests.support.fake_anthropic import COUNT_TOKENS_PATH, FakeAnthropic, Reply, Usage
from tests.support.fake_batches import BATCHES_PATH
from tests.support.rpc import reason, rpc_error, violations
from tests.support.servers import ai_settings, channel_to, running_ai

MODEL = "claude-test-model"
GOOD = {
    "summary": "A blender that works well but is loud.",
    "sentiment": "mixed",
    "key_points": ["powerful motor", "very loud"],
    "confidence": 0.82,
}
# Fast polling: the fake's batches end when a test says so.
FAST = {
    "model": MODEL,
    "batch_poll_seconds": 0.05,
    "batch_poll_max_seconds": 0.2,
    "batch_scan_seconds": 0.2,
}


@dataclass
class Stubs:
    ai: Any
    operations: Any


@asynccontextmanager
async def claude(database_url: str, metrics: Metrics | None = None) -> AsyncIterator[Stubs]:
    settings = ai_settings(database_url, **FAST)
    async with running_ai(settings, metrics) as address, channel_to(address) as channel:
        yield Stubs(
            analysis_pb2_grpc.AnalysisServiceStub(channel),
            operations_pb2_grpc.OperationsStub(channel),
        )


async def start(stubs: Stubs, texts: list[str]) -> str:
    started = await stubs.ai.BatchAnalyzeTexts(
        analysis_pb2.BatchAnalyzeTextsRequest(texts=texts, user_id=str(uuid.uuid4()))
    )
    return str(started.name)


async def first_poll(fake: FakeAnthropic) -> str:
    """The id of the first batch, once the service polled it: by then it is recorded."""
    (created,) = await fake.wait_for_requests_async(1, timeout=10, path=BATCHES_PATH)
    assert created.method == "POST"
    assert await created.wait_completed(10)
    batch_id = fake.batches.ids[0]
    await fake.wait_for_requests_async(1, timeout=10, path=f"{BATCHES_PATH}/{batch_id}")
    return batch_id


async def finished(stubs: Stubs, name: str) -> Any:
    operation = await stubs.operations.WaitOperation(
        operations_pb2.WaitOperationRequest(name=name, timeout=duration_pb2.Duration(seconds=20))
    )
    assert operation.done
    return operation


def reason_of(status: Any) -> str:
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    return str(info.reason)


def unpacked(any_message: Any, kind: Any) -> Any:
    message = kind()
    assert any_message.Unpack(message)
    return message


async def test_texts_go_as_one_provider_batch_and_come_back_in_order_with_item_errors(
    ai_db: str, fake: FakeAnthropic
) -> None:
    usage = Usage(input_tokens=300, output_tokens=40)
    fake.enqueue(
        Reply.json_output(GOOD, usage=usage),
        Reply.refusal(),
        Reply.overloaded(),
        Reply.text("no JSON here"),
    )
    texts = [f"Text number {i}." for i in range(5)]
    metrics = Metrics()
    async with claude(ai_db, metrics) as stubs:
        name = await start(stubs, texts)
        batch_id = await first_poll(fake)
        running = await stubs.operations.GetOperation(operations_pb2.GetOperationRequest(name=name))
        metadata = unpacked(running.metadata, analysis_pb2.BatchAnalyzeTextsMetadata)
        assert not running.done
        assert list(metadata.provider_batch_ids) == [batch_id]
        assert (metadata.total_count, metadata.pending_count) == (5, 5)
        assert metadata.model == MODEL

        fake.batches.end(batch_id, expire=["t4"])
        done = await finished(stubs, name)
        metadata = unpacked(done.metadata, analysis_pb2.BatchAnalyzeTextsMetadata)
        results = unpacked(done.response, analysis_pb2.BatchAnalyzeTextsResponse).results
        assert (metadata.succeeded_count, metadata.failed_count, metadata.pending_count) == (
            1,
            4,
            0,
        )
        analysis = results[0].analysis
        assert analysis.sentiment == analysis_pb2.SENTIMENT_MIXED
        assert analysis.summary == GOOD["summary"]
        assert analysis.usage.service_tier == "batch"
        assert (analysis.usage.input_tokens, analysis.usage.output_tokens) == (300, 40)
        stored = await stubs.ai.GetAnalysis(analysis_pb2.GetAnalysisRequest(id=analysis.id))
        assert stored == analysis
        errors = [(r.error.code, reason_of(r.error)) for r in results[1:]]
        assert errors == [
            (grpc.StatusCode.INVALID_ARGUMENT.value[0], "INVALID_ARGUMENT"),
            (grpc.StatusCode.UNAVAILABLE.value[0], "PROVIDER_OVERLOADED_ERROR"),
            (grpc.StatusCode.UNAVAILABLE.value[0], "MODEL_OUTPUT_INVALID"),
            (grpc.StatusCode.DEADLINE_EXCEEDED.value[0], "PROVIDER_BATCH_EXPIRED"),
        ]
    # Counted as the interactive analyses are: one analysis, its tokens.
    assert metrics.value("tandem_ai_analyses", model=MODEL) == 1
    assert metrics.value("tandem_ai_tokens", model=MODEL, kind="input") == 300
    # One batch, its requests the interactive call's, each text in its own fence.
    assert len(fake.batches.ids) == 1
    assert fake.batches.custom_ids(batch_id) == ["t0", "t1", "t2", "t3", "t4"]
    create = next(r for r in fake.requests_to(BATCHES_PATH) if r.method == "POST")
    params = create.json["requests"][0]["params"]
    assert params["model"] == MODEL
    assert params["system"][0]["text"] == SYSTEM_PROMPT
    assert params["output_config"]["format"]["schema"] == OUTPUT_SCHEMA
    assert "Text number 0." in params["messages"][0]["content"]
    assert "stream" not in params


async def test_cancel_cancels_the_provider_batch_and_keeps_what_it_finished(
    ai_db: str, fake: FakeAnthropic
) -> None:
    async with claude(ai_db) as stubs:
        name = await start(stubs, ["One.", "Two."])
        batch_id = await first_poll(fake)
        await stubs.operations.CancelOperation(operations_pb2.CancelOperationRequest(name=name))
        done = await finished(stubs, name)
    cancel_path = f"{BATCHES_PATH}/{batch_id}/cancel"
    assert [r.method for r in fake.requests_to(cancel_path)] == ["POST"]
    assert fake.batches.status(batch_id) == "ended"
    assert done.WhichOneof("result") == "error"
    assert done.error.code == grpc.StatusCode.CANCELLED.value[0]
    finished_first = unpacked(done.error.details[0], analysis_pb2.BatchAnalyzeTextsResponse)
    assert [reason_of(r.error) for r in finished_first.results] == ["OPERATION_CANCELLED"] * 2
    metadata = unpacked(done.metadata, analysis_pb2.BatchAnalyzeTextsMetadata)
    assert metadata.cancel_requested
    assert (metadata.failed_count, metadata.pending_count) == (2, 0)


async def test_a_transient_failure_to_create_the_batch_is_tried_again(
    ai_db: str, fake: FakeAnthropic
) -> None:
    fake.enqueue(Reply.overloaded(should_retry=False), path=BATCHES_PATH)
    async with claude(ai_db) as stubs:
        name = await start(stubs, ["One."])
        created = await fake.wait_for_requests_async(2, timeout=10, path=BATCHES_PATH)
        assert [r.method for r in created] == ["POST", "POST"]
        assert await created[1].wait_completed(10)
        (batch_id,) = fake.batches.ids
        fake.enqueue(Reply.json_output(GOOD))
        fake.batches.end(batch_id)
        done = await finished(stubs, name)
    results = unpacked(done.response, analysis_pb2.BatchAnalyzeTextsResponse).results
    assert results[0].analysis.summary == GOOD["summary"]


async def test_a_batch_the_provider_refuses_fails_each_text_with_its_reason(
    ai_db: str, fake: FakeAnthropic
) -> None:
    fake.enqueue(Reply.error(400, "invalid_request_error", "no"), path=BATCHES_PATH)
    async with claude(ai_db) as stubs:
        done = await finished(stubs, await start(stubs, ["One.", "Two."]))
    results = unpacked(done.response, analysis_pb2.BatchAnalyzeTextsResponse).results
    assert [(r.error.code, reason_of(r.error)) for r in results] == [
        (grpc.StatusCode.FAILED_PRECONDITION.value[0], "PROVIDER_REJECTED")
    ] * 2
    assert fake.batches.ids == []


async def test_a_batchs_tokens_count_against_the_daily_quota(
    ai_db: str, fake: FakeAnthropic
) -> None:
    fake.enqueue(*[Reply.json_output(GOOD, usage=Usage(input_tokens=300, output_tokens=40))] * 3)
    settings = ai_settings(ai_db, **FAST, analyses_per_minute=2, provider_tokens_per_day=500)
    async with running_ai(settings) as address, channel_to(address) as channel:
        stubs = Stubs(
            analysis_pb2_grpc.AnalysisServiceStub(channel),
            operations_pb2_grpc.OperationsStub(channel),
        )
        user = str(uuid.uuid4())
        started = await stubs.ai.BatchAnalyzeTexts(
            analysis_pb2.BatchAnalyzeTextsRequest(texts=["A.", "B.", "C."], user_id=user)
        )
        batch_id = await first_poll(fake)
        fake.batches.end(batch_id)
        await finished(stubs, started.name)
        # The three results' 1,020 tokens are more than the day's 500: the next
        # analysis is refused.
        refused = await rpc_error(
            stubs.ai.AnalyzeText(analysis_pb2.AnalyzeTextRequest(text="D.", user_id=user))
        )
    assert refused.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert reason(refused) == "TOKEN_QUOTA_EXHAUSTED"


async def test_a_text_over_the_token_budget_refuses_the_batch_before_any_paid_call(
    ai_db: str, fake: FakeAnthropic
) -> None:
    settings = ai_settings(ai_db, **FAST, max_input_tokens=12_000, max_text_chars=250_000)
    async with running_ai(settings) as address, channel_to(address) as channel:
        ai = analysis_pb2_grpc.AnalysisServiceStub(channel)
        # The second is near the limit (counted, then refused), the third far past it.
        texts = ["Short and sweet.", "word " * 8000, "x" * 200_000]
        refused = await rpc_error(
            ai.BatchAnalyzeTexts(
                analysis_pb2.BatchAnalyzeTextsRequest(texts=texts, user_id=str(uuid.uuid4()))
            )
        )
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    found = violations(refused)
    assert set(found) == {"texts[1]", "texts[2]"}
    assert "at most 12000" in found["texts[1]"]
    assert len(fake.requests_to(COUNT_TOKENS_PATH)) == 1
    assert fake.batches.ids == []
