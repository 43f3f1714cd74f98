"""Texts past a provider batch's limits go into several batches, each polled and
collected, the results still in the request's order (a runner and the Claude worker
in process, with a small request limit, against the fake's Message Batches)."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import anthropic

from ai_service.backends.anthropic import AnthropicBackend
from ai_service.batches import BatchRunner
from ai_service.claude_batches import ClaudeBatches
from ai_service.operations_repository import Operation, OperationsRepository
from ai_service.repository import AnalysesRepository
from servicekit.database import Database, create_engine
from tests.support.fake_anthropic import FakeAnthropic, Reply
from tests.support.servers import ai_settings

MODEL = "claude-test-model"


async def test_texts_past_the_request_limit_go_in_several_batches(
    ai_sqlite_db: str, fake: FakeAnthropic
) -> None:
    fake.batches.end_after_polls = 1
    fake.set_responder(
        lambda request: Reply.json_output(
            {
                "summary": request.user_text,
                "sentiment": "neutral",
                "key_points": ["a text"],
                "confidence": 0.5,
            }
        )
    )
    engine = create_engine(ai_settings(ai_sqlite_db), application_name="test")
    database = Database(engine, what="ai")
    repository = OperationsRepository(database)
    client = anthropic.AsyncAnthropic(base_url=fake.url, api_key=fake.api_key, max_retries=0)
    backend = AnthropicBackend(client, model=MODEL, max_output_tokens=256, timeout_seconds=10)
    worker = ClaudeBatches(backend, poll_seconds=0.01, poll_max_seconds=0.02, max_requests=2)
    runner = BatchRunner(repository, worker, lease_seconds=30, scan_seconds=3600)
    texts = [f"Text {i}." for i in range(5)]
    operation = Operation.new(uuid.uuid4(), MODEL, len(texts), datetime.now(UTC))
    try:
        await repository.create(operation, texts, key=None)
        task = runner.take(operation.id)
        assert task is not None
        await task
        done = await repository.get(operation.id)
        items = await repository.items(operation.id)
        stored = await AnalysesRepository(database).get_many(
            [i.analysis_id for i in items if i.analysis_id is not None]
        )
    finally:
        await runner.stop()
        await client.close()
        await engine.dispose()
    assert [fake.batches.custom_ids(b) for b in fake.batches.ids] == [
        ["t0", "t1"],
        ["t2", "t3"],
        ["t4"],
    ]
    assert done is not None
    assert list(done.provider_batch_ids) == fake.batches.ids
    assert (done.done, done.succeeded, done.failed) == (True, 5, 0)
    assert [i.provider_batch_id for i in items] == [fake.batches.ids[p // 2] for p in range(5)]
    # Each text's analysis is its own, in order.
    summaries = [stored[i.analysis_id].result.summary for i in items if i.analysis_id]
    assert [f"Text {p}." in summary for p, summary in enumerate(summaries)] == [True] * 5
