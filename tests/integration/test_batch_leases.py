"""Replicas and batch operations, on SQLite and PostgreSQL: one replica works on an
operation at a time (its lease), another takes over once the lease has run out - and
the first then stops - and what was finished before stays finished, once.

Each "replica" is a BatchRunner with its own engine on the one database; workers are
gated by events, so nothing here waits on time except the leases under test.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select

from ai_service.backends.base import UpstreamTrace
from ai_service.batches import BatchRunner, Job, OfflineBatches
from ai_service.domain import AnalysisResult, PartialResult, Sentiment
from ai_service.operations_repository import Operation, OperationsRepository
from ai_service.repository import analyses
from servicekit.database import Database, create_engine
from tests.support.servers import ai_settings

RESULT = AnalysisResult(
    summary="A text.",
    sentiment=Sentiment.NEUTRAL,
    key_points=("text",),
    confidence=0.5,
    model="gated",
)


class Gated:
    """Finishes the first pending item, then holds until `go`, then the rest."""

    model = "gated"

    def __init__(self) -> None:
        self.started = asyncio.Event()
        self.go = asyncio.Event()
        self.runs = 0
        self.seen: list[int] = []

    async def run(self, job: Job) -> None:
        self.runs += 1
        pending = await job.pending()
        self.seen = [i.position for i in pending]
        await job.finish([(pending[0], RESULT)])
        self.started.set()
        while not self.go.is_set():
            await job.sleep(0.005)
        for item in await job.pending():
            await job.finish([(item, RESULT)])


# The repository each replica's runner works with: its own view of the database.
REPOSITORIES: dict[int, OperationsRepository] = {}
Replica = Callable[..., BatchRunner]


@pytest.fixture
async def replica(ai_db: str) -> AsyncIterator[Replica]:
    """Makes replicas, each with its own engine; stops them all at the end."""
    made: list[tuple[BatchRunner, Database]] = []

    def make(worker: object, **options: object) -> BatchRunner:
        engine = create_engine(ai_settings(ai_db), application_name="test")
        database = Database(engine, what="ai")
        values: dict[str, object] = {"lease_seconds": 30.0, "scan_seconds": 3600.0, **options}
        repository = OperationsRepository(database)
        runner = BatchRunner(repository, worker, **values)  # type: ignore[arg-type]
        REPOSITORIES[id(runner)] = repository
        made.append((runner, database))
        return runner

    yield make
    for runner, database in made:
        await runner.stop()
        await database.engine.dispose()
        REPOSITORIES.pop(id(runner), None)


async def new_operation(runner: BatchRunner, texts: int = 3) -> Operation:
    operation = Operation.new(uuid.uuid4(), "gated", texts, datetime.now(UTC))
    await repository_of(runner).create(operation, [f"Text {i}." for i in range(texts)], key=None)
    return operation


def repository_of(runner: BatchRunner) -> OperationsRepository:
    return REPOSITORIES[id(runner)]


async def stored_analyses(ai_db: str, user_id: uuid.UUID) -> int:
    engine = create_engine(ai_settings(ai_db), application_name="test")
    statement = select(func.count()).select_from(analyses).where(analyses.c.user_id == user_id)
    try:
        return int(
            await Database(engine, what="ai").read(lambda c: c.execute(statement).scalar_one())
        )
    finally:
        await engine.dispose()


async def test_a_second_replica_leaves_a_leased_operation_alone(
    replica: Replica, ai_db: str
) -> None:
    first_worker, second_worker = Gated(), Gated()
    first, second = replica(first_worker), replica(second_worker)
    operation = await new_operation(first)
    working = first.take(operation.id)
    assert working is not None
    await first_worker.started.wait()

    attempt = second.take(operation.id)
    assert attempt is not None
    await attempt
    assert second_worker.runs == 0
    assert operation.id not in await repository_of(second).claimable(datetime.now(UTC), 10)

    first_worker.go.set()
    await working
    done = await repository_of(second).get(operation.id)
    assert done is not None
    assert (done.done, done.succeeded, done.failed) == (True, 3, 0)
    assert await stored_analyses(ai_db, operation.user_id) == 3


async def test_an_expired_lease_is_taken_over_and_the_old_holder_stops(
    replica: Replica, ai_db: str
) -> None:
    old_worker, new_worker = Gated(), Gated()
    # The old holder renews often; the new one's clock is an hour on, so every lease
    # the old one took has run out by it: as if the old one had hung for an hour.
    old = replica(old_worker, lease_seconds=0.03)
    new = replica(new_worker, clock=lambda: datetime.now(UTC) + timedelta(hours=1))
    operation = await new_operation(old)
    holding = old.take(operation.id)
    assert holding is not None
    await old_worker.started.wait()

    assert operation.id in await repository_of(new).claimable(new.now(), 10)
    taking = new.take(operation.id)
    assert taking is not None
    await new_worker.started.wait()
    # The old holder's next renewal fails: it stops, leaving the rest to the new one.
    await holding
    assert old_worker.go.is_set() is False
    still = await repository_of(new).get(operation.id)
    assert still is not None and not still.done

    new_worker.go.set()
    await taking
    # The text the old holder finished was not given to the new one, nor stored twice.
    assert old_worker.seen == [0, 1, 2]
    assert new_worker.seen == [1, 2]
    done = await repository_of(new).get(operation.id)
    assert done is not None
    assert (done.done, done.succeeded) == (True, 3)
    assert await stored_analyses(ai_db, operation.user_id) == 3


class HeldBackend:
    """An offline-like backend whose first analysis waits for `release`."""

    model = "held"

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def analyze(self, text: str, *, deadline: float, trace: UpstreamTrace) -> AnalysisResult:
        self.entered.set()
        await self.release.wait()
        return RESULT

    async def stream(
        self, text: str, *, deadline: float, trace: UpstreamTrace
    ) -> AsyncIterator[PartialResult | AnalysisResult]:
        yield await self.analyze(text, deadline=deadline, trace=trace)


async def test_a_cancelled_offline_operation_ends_with_the_rest_cancelled(
    replica: Replica,
) -> None:
    backend = HeldBackend()
    runner = replica(OfflineBatches(backend))
    operation = await new_operation(runner, texts=3)
    task = runner.take(operation.id)
    assert task is not None
    await backend.entered.wait()
    await repository_of(runner).request_cancel(operation.id, runner.now())
    runner.poke(operation.id, cancel=True)
    backend.release.set()
    await task
    items = await repository_of(runner).items(operation.id)
    assert [i.analysis_id is not None for i in items] == [True, False, False]
    assert [i.error.reason if i.error else None for i in items] == [
        None,
        "OPERATION_CANCELLED",
        "OPERATION_CANCELLED",
    ]
    assert all(i.text is None for i in items), "finished items keep no text"
