"""The ai repository's batched statements on a real database: concurrent inserts share
one transaction and concurrent cache lookups one query, and each caller still gets
exactly its own outcome."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest

from ai_service.domain import Analysis, AnalysisResult, Sentiment, Usage
from ai_service.repository import AnalysesRepository
from ai_service.settings import AiSettings
from servicekit.database import Database, create_engine
from tests.support.servers import migrate_ai

NOW = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)


@pytest.fixture
async def repository(ai_db: str) -> AsyncIterator[AnalysesRepository]:
    engine = create_engine(AiSettings(database_url=ai_db), application_name="tandem-test")
    try:
        yield AnalysesRepository(Database(engine, what="ai"))
    finally:
        await engine.dispose()


def analysis(
    user: uuid.UUID, summary: str, *, at: datetime = NOW, model: str = "m", cached: bool = False
) -> Analysis:
    return Analysis(
        id=uuid.uuid4(),
        user_id=user,
        result=AnalysisResult(
            summary=summary,
            sentiment=Sentiment.MIXED,
            key_points=("a", "b"),
            confidence=0.5,
            model=model,
            usage=Usage(1, 2, 3, 4),
        ),
        create_time=at,
        cached=cached,
    )


async def test_concurrent_inserts_are_all_stored(repository: AnalysesRepository) -> None:
    user = uuid.uuid4()
    made = [analysis(user, f"s{i}", at=NOW + timedelta(seconds=i)) for i in range(50)]
    await asyncio.gather(*(repository.insert(a, cache_key=f"k{i}") for i, a in enumerate(made)))
    stored = await repository.list_for_user(user, before=None, limit=100)
    assert stored == sorted(made, key=lambda a: a.create_time, reverse=True)


async def test_concurrent_lookups_each_get_their_own_newest_fresh_result(
    repository: AnalysesRepository,
) -> None:
    user = uuid.uuid4()
    await repository.insert(analysis(user, "old a", at=NOW - timedelta(hours=2)), cache_key="a")
    await repository.insert(analysis(user, "new a", at=NOW - timedelta(minutes=5)), cache_key="a")
    await repository.insert(analysis(user, "b", at=NOW - timedelta(minutes=1)), cache_key="b")
    await repository.insert(analysis(user, "stale c", at=NOW - timedelta(hours=3)), cache_key="c")
    hour_ago = NOW - timedelta(hours=1)
    found = await asyncio.gather(
        repository.find_result("a", since=hour_ago),
        repository.find_result("b", since=hour_ago),
        # The same key asked with a later `since`: b's result is too old for this caller.
        repository.find_result("b", since=NOW - timedelta(seconds=30)),
        repository.find_result("c", since=hour_ago),
        repository.find_result("missing", since=hour_ago),
    )
    summaries = [result.summary if result else None for result in found]
    assert summaries == ["new a", "b", None, None, None]


async def test_a_copy_served_from_the_cache_is_not_itself_a_cache_entry(
    repository: AnalysesRepository,
) -> None:
    user = uuid.uuid4()
    await repository.insert(analysis(user, "copy", cached=True), cache_key=None)
    assert await repository.find_result("k", since=NOW - timedelta(hours=1)) is None
    assert len(await repository.list_for_user(user, before=None, limit=10)) == 1


@pytest.mark.postgres
async def test_one_bad_row_fails_only_its_own_insert(postgres_url: str) -> None:
    # On PostgreSQL a model name over the column's 128 characters fails its INSERT,
    # which fails the batch's transaction; the other rows are stored one by one.
    await migrate_ai(postgres_url)
    engine = create_engine(AiSettings(database_url=postgres_url), application_name="tandem-test")
    repository = AnalysesRepository(Database(engine, what="ai"))
    try:
        user = uuid.uuid4()
        rows = [analysis(user, "good 1"), analysis(user, "bad", model="x" * 200)]
        rows.append(analysis(user, "good 2"))
        outcomes = await asyncio.gather(
            *(repository.insert(a, cache_key=None) for a in rows), return_exceptions=True
        )
        assert outcomes[0] is None
        assert isinstance(outcomes[1], Exception)
        assert outcomes[2] is None
        stored = await repository.list_for_user(user, before=None, limit=10)
        assert sorted(a.result.summary for a in stored) == ["good 1", "good 2"]
    finally:
        await engine.dispose()
