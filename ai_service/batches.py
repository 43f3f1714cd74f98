"""Runs BatchAnalyzeTexts operations in the background, on every replica.

Each unfinished operation is worked on by the replica that holds its lease (in the
database, ai_service.operations_repository): the one that created it, at once; after a
restart or a replica's death, whichever replica's scan finds it with its lease run out.
A worker (offline: `OfflineBatches`; Claude: ai_service.claude_batches) takes the
operation's pending items and finishes each one exactly once - an analysis stored, or
an error - through its `Job`, which also renews the lease and says whether the
operation was cancelled. Nothing is kept only in memory: a replica that dies mid-batch
leaves its operation to be taken over, and its items finished already stay finished.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Protocol

import grpc

from ai_service.analyses import cache_key
from ai_service.backends.base import Backend, UpstreamTrace
from ai_service.domain import Analysis, AnalysisResult, Usage
from ai_service.metrics import Metrics
from ai_service.operations_repository import (
    Item,
    ItemError,
    Operation,
    OperationsRepository,
    Outcome,
)
from ai_service.quotas import AnalysisQuotas
from servicekit.errors import ServiceError

log = logging.getLogger(__name__)

# Operations a scan takes on at once; the rest wait for the next scan.
SCAN_LIMIT = 100
# The reason of the items a cancellation left unanalysed.
CANCELLED_REASON = "OPERATION_CANCELLED"
# A text's offline analysis is bounded by this many seconds (it takes milliseconds).
OFFLINE_ITEM_SECONDS = 60.0
# Offline results are stored this many at a time (one commit each, not one per text).
OFFLINE_CHUNK = 25


class LeaseLost(Exception):
    """Another replica holds the operation's lease now: stop working on it."""


class Stopping(Exception):
    """This replica is shutting down: stop working, leave the rest to the next one."""


# How long a stopping replica waits for its jobs to reach a checkpoint.
STOP_SECONDS = 5.0


def item_error(error: ServiceError) -> ItemError:
    return ItemError(error.code.value[0], error.reason, error.message)


def cancelled_error() -> ItemError:
    return ItemError(
        grpc.StatusCode.CANCELLED.value[0],
        CANCELLED_REASON,
        "the operation was cancelled before this text was analysed",
    )


class Job:
    """One operation, as its worker sees it while this replica holds its lease."""

    def __init__(
        self,
        operation: Operation,
        repository: OperationsRepository,
        runner: BatchRunner,
    ) -> None:
        self.operation = operation
        self._repository = repository
        self._runner = runner
        self._renewed = asyncio.get_running_loop().time()
        self.poked = asyncio.Event()
        self._cancelled = operation.cancel_requested

    @property
    def id(self) -> uuid.UUID:
        return self.operation.id

    @property
    def cancelled(self) -> bool:
        """CancelOperation was called (as far as this replica has seen)."""
        return self._cancelled

    def poke(self, *, cancel: bool = False) -> None:
        self._cancelled = self._cancelled or cancel
        self.poked.set()

    async def pending(self) -> list[Item]:
        return await self._repository.items(self.id, pending_only=True)

    async def checkpoint(self) -> None:
        """Renews the lease when a third of it has passed, and looks for a cancellation
        made on another replica; LeaseLost if another replica took the operation,
        Stopping when this one shuts down."""
        if self._runner.stopping.is_set():
            raise Stopping
        now = asyncio.get_running_loop().time()
        if now - self._renewed < self._runner.lease_seconds / 3:
            return
        if not await self._runner.renew(self.id):
            raise LeaseLost(str(self.id))
        self._renewed = now
        stored = await self._repository.get(self.id)
        if stored is not None and stored.cancel_requested:
            self._cancelled = True

    async def sleep(self, seconds: float) -> None:
        """Waits `seconds`, or less when poked (a cancellation), keeping the lease."""
        loop = asyncio.get_running_loop()
        end = loop.time() + seconds
        while (remaining := end - loop.time()) > 0 and not self.poked.is_set():
            await _first(
                (self.poked, self._runner.stopping),
                min(remaining, self._runner.lease_seconds / 3),
            )
            await self.checkpoint()
        self.poked.clear()

    async def finish(self, done: Sequence[tuple[Item, AnalysisResult | ItemError]]) -> None:
        """Stores what became of these items, in one transaction: each analysis (once:
        not when the item was finished already) or error."""
        if not done:
            return
        now = self._runner.now()
        owner, model = self.operation.user_id, self.operation.model
        outcomes = []
        for item, result in done:
            if isinstance(result, ItemError):
                outcomes.append(Outcome(item.position, result))
                continue
            assert item.text is not None, "a pending item keeps its text"
            analysis = Analysis(id=uuid.uuid4(), user_id=owner, result=result, create_time=now)
            outcomes.append(Outcome(item.position, analysis, cache_key(model, item.text, owner)))
        await self._repository.finish(self.id, outcomes, now)
        produced = [r for _, r in done if isinstance(r, AnalysisResult)]
        for result in produced:
            self._runner.metrics.produced(result)
        if self._runner.quotas is not None:
            # The user's daily tokens: a batch's count as its results come in.
            await self._runner.quotas.spent(owner, sum((r.usage for r in produced), Usage()))
        await self._progressed()

    async def fail(self, positions: Sequence[int], error: ItemError) -> None:
        if positions:
            await self._repository.fail(self.id, positions, error, self._runner.now())
            await self._progressed()

    async def submitted(self, batch_id: str, positions: Sequence[int]) -> None:
        await self._repository.submitted(self.id, batch_id, positions, self._runner.now())
        self._runner.notify(self.id)

    async def _progressed(self) -> None:
        self._runner.notify(self.id)
        await self.checkpoint()


class BatchWorker(Protocol):
    @property
    def model(self) -> str:
        """The model or analyzer the operations' texts go to."""
        ...

    async def run(self, job: Job) -> None:
        """Finishes every pending item of `job`'s operation, then returns."""
        ...


class OfflineBatches:
    """The offline analyzer's batches: the texts one after the other, in the background."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend

    @property
    def model(self) -> str:
        return self._backend.model

    async def run(self, job: Job) -> None:
        pending = await job.pending()
        done: list[tuple[Item, AnalysisResult | ItemError]] = []
        for index, item in enumerate(pending):
            if job.cancelled:
                await job.finish(done)
                await job.fail([i.position for i in pending[index:]], cancelled_error())
                return
            done.append((item, await self._analyze(item)))
            if len(done) >= OFFLINE_CHUNK:
                await job.finish(done)
                done = []
        await job.finish(done)

    async def _analyze(self, item: Item) -> AnalysisResult | ItemError:
        assert item.text is not None
        deadline = asyncio.get_running_loop().time() + OFFLINE_ITEM_SECONDS
        try:
            return await self._backend.analyze(item.text, deadline=deadline, trace=UpstreamTrace())
        except ServiceError as error:
            return item_error(error)


class BatchRunner:
    """This replica's share of the operations: the ones it holds the lease of."""

    def __init__(
        self,
        repository: OperationsRepository,
        worker: BatchWorker,
        *,
        lease_seconds: float,
        scan_seconds: float,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        quotas: AnalysisQuotas | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        """`quotas`: each user's, where the provider tokens of results are counted;
        `metrics`: where the analyses and tokens of results are counted."""
        self._repository = repository
        self.quotas = quotas
        self.metrics = metrics or Metrics()
        self.worker = worker
        self.lease_seconds = lease_seconds
        self._scan_seconds = scan_seconds
        self._clock = clock
        # Who holds a lease: this process, unique across restarts and hosts.
        self.owner = f"{socket.gethostname()[:32]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._jobs: dict[uuid.UUID, Job | None] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._changes: dict[uuid.UUID, asyncio.Event] = {}
        self._scanner: asyncio.Task[None] | None = None
        self.stopping = asyncio.Event()

    def now(self) -> datetime:
        return self._clock()

    async def start(self) -> None:
        """Begins scanning for operations without a live lease (now, then regularly)."""
        self._scanner = asyncio.create_task(self._scan_forever(), name="batch-scan")

    async def stop(self) -> None:
        """Stops every job at its next checkpoint and frees their leases, so that
        another replica goes on at once."""
        held = list(self._jobs)
        self.stopping.set()
        tasks = [t for t in (self._scanner, *self._tasks) if t is not None]
        if tasks:
            # Jobs stop between statements; cancelling one inside a database call
            # would leave its connection checked out.
            _, late = await asyncio.wait(tasks, timeout=STOP_SECONDS)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        for operation_id in held:
            with contextlib.suppress(Exception):
                await self._repository.release(operation_id, self.owner)

    def take(self, operation_id: uuid.UUID) -> asyncio.Task[None] | None:
        """Works on the operation here, if no other replica does: the task that does
        (None when one here does already)."""
        if operation_id in self._jobs or self.stopping.is_set():
            return None
        self._jobs[operation_id] = None
        task = asyncio.create_task(self._run(operation_id), name=f"batch-{operation_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    def poke(self, operation_id: uuid.UUID, *, cancel: bool = False) -> None:
        """Tells the operation's job here, if any, to look again (it was cancelled)."""
        job = self._jobs.get(operation_id)
        if job is not None:
            job.poke(cancel=cancel)

    def notify(self, operation_id: uuid.UUID) -> None:
        """Wakes whoever waits for the operation to change here."""
        event = self._changes.pop(operation_id, None)
        if event is not None:
            event.set()

    async def changed(self, operation_id: uuid.UUID, seconds: float) -> None:
        """Returns when the operation changed on this replica, or after `seconds`
        (it may run on another replica, which cannot tell this one)."""
        event = self._changes.setdefault(operation_id, asyncio.Event())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), max(0.0, seconds))
        if not event.is_set() and self._changes.get(operation_id) is event:
            # Not kept for operations that never change here (another replica runs
            # them); a waiter that still holds it looks again after its own timeout.
            del self._changes[operation_id]

    async def renew(self, operation_id: uuid.UUID) -> bool:
        now = self._clock()
        until = now + timedelta(seconds=self.lease_seconds)
        return await self._repository.lease(operation_id, self.owner, now, until)

    async def _scan_forever(self) -> None:
        while not self.stopping.is_set():
            try:
                for operation_id in await self._repository.claimable(self._clock(), SCAN_LIMIT):
                    self.take(operation_id)
            except Exception:
                log.exception("looking for batch operations to resume failed")
            await _first((self.stopping,), self._scan_seconds)

    async def _run(self, operation_id: uuid.UUID) -> None:
        try:
            if not await self.renew(operation_id):
                return  # another replica has it, or it is done
            operation = await self._repository.get(operation_id)
            if operation is None or operation.done:
                return
            job = Job(operation, self._repository, self)
            self._jobs[operation_id] = job
            log.info("working on operation %s (%d texts)", operation_id, operation.total)
            await self.worker.run(job)
            await self._repository.end(operation_id, self._clock())
            log.info("operation %s is done", operation_id)
        except LeaseLost:
            log.warning("operation %s was taken over by another replica", operation_id)
        except Stopping:
            log.info("operation %s is left for the next replica to resume", operation_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            # Left to a later scan (here or elsewhere) once its lease has run out.
            log.exception("operation %s failed; it will be resumed", operation_id)
        finally:
            self._jobs.pop(operation_id, None)
            self.notify(operation_id)


async def _first(events: Sequence[asyncio.Event], seconds: float) -> None:
    """Returns once one of `events` is set, or after `seconds`."""
    waits = [asyncio.ensure_future(e.wait()) for e in events]
    try:
        await asyncio.wait(waits, timeout=max(0.0, seconds), return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()
