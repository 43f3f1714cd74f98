"""Micro-batching: concurrent callers' items reach a database or a service in one trip.

Group commit for writes, one `IN` query for lookups, one batch call for reads. While
as many batches as allowed are out, the items that arrive queue up and go together in
the next one, so batches grow with load and a lone call waits for nobody. Each caller
gets its own item's result: a value, an error of its own, or the error of its batch.

A named batcher is observable: while tracing is on, the spans of each batch's work (its
call, its statements) link to the span of every request it serves (fan-in: each
request's trace shows the shared call), and while the process serves metrics, its size
is recorded (`tandem_batch_size`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from functools import partial
from typing import Generic, TypeAlias, TypeVar

from servicekit import metrics, telemetry
from servicekit.span_records import Context

Item = TypeVar("Item")
Result = TypeVar("Result")
# An item, the future its caller awaits, and the caller's span (to link the batch to).
_Entry: TypeAlias = "tuple[Item, asyncio.Future[Result], Context | None]"


class Batcher(Generic[Item, Result]):
    """Runs `run` on batches of submitted items, at most `max_in_flight` at a time.

    `run` takes the items in submission order and returns one outcome per item, in the
    same order: its result, or an exception to raise to that item's caller alone. An
    item whose caller has given up (cancelled) before its batch starts is left out, so
    a write nobody will acknowledge is not made.

    With one batch in flight, items wait for the one before (group commit: the most
    sharing). More let a slow batch hold up only its own items, at the price of
    smaller batches when there is room to send them.
    """

    def __init__(
        self,
        run: Callable[[list[Item]], Awaitable[Sequence[Result | Exception]]],
        *,
        max_size: int = 256,
        max_in_flight: int = 1,
        name: str | None = None,
    ) -> None:
        """`name`: the batch span's name and the metrics' `batch` label; None: unobserved."""
        if max_size < 1 or max_in_flight < 1:
            raise ValueError("max_size and max_in_flight must be at least 1")
        self._run = run
        self._name = name
        self._max_size = max_size
        self._slots = asyncio.Semaphore(max_in_flight)
        self._queue: list[_Entry[Item, Result]] = []
        self._worker: asyncio.Task[None] | None = None
        # The loop holds tasks only weakly; these must not be collected mid-batch.
        self._in_flight: set[asyncio.Task[None]] = set()

    async def submit(self, item: Item) -> Result:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        link = telemetry.current_link() if self._name is not None else None
        self._queue.append((item, future, link))
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._drain())
            self._worker.add_done_callback(self._drained)
        return await future

    async def _drain(self) -> None:
        while self._queue:
            await self._slots.acquire()
            batch = [entry for entry in self._queue[: self._max_size] if not entry[1].done()]
            del self._queue[: self._max_size]
            if not batch:
                self._slots.release()
                continue
            task = asyncio.get_running_loop().create_task(self._run_batch(batch))
            self._in_flight.add(task)
            task.add_done_callback(partial(self._finished, batch))

    def _drained(self, worker: asyncio.Task[None]) -> None:
        # A callback, not a `finally`: a task cancelled before it first ran never
        # enters its coroutine.
        if self._worker is worker:
            self._worker = None
        if worker.cancelled():
            # The process is stopping: nobody learns a result.
            for _, future, _ in self._queue:
                future.cancel()
            self._queue.clear()

    def _finished(self, batch: list[_Entry[Item, Result]], task: asyncio.Task[None]) -> None:
        self._in_flight.discard(task)
        self._slots.release()
        if task.cancelled():
            # The process is stopping: nobody learns a result.
            for _, future, _ in batch:
                future.cancel()

    async def _run_batch(self, batch: list[_Entry[Item, Result]]) -> None:
        if self._name is None:
            await self._answer(batch)
            return
        if metrics.recording():
            metrics.BATCH_SIZE.labels(self._name).observe(len(batch))
        # Only a request of a sampled trace has a span to link to.
        links = [link for _, _, link in batch if link is not None]
        if not links:
            await self._answer(batch)
            return
        with telemetry.fan_in(self._name, len(batch), links):
            await self._answer(batch)

    async def _answer(self, batch: list[_Entry[Item, Result]]) -> None:
        try:
            results = await self._run([item for item, _, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} items gave {len(results)} results")
        except Exception as exc:  # noqa: BLE001 - raised to every caller in the batch
            for _, future, _ in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future, _), outcome in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(outcome, Exception):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
