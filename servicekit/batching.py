"""Micro-batching: concurrent callers' items reach the database in one round trip.

Group commit for writes and one `IN` query for lookups. While a batch is at the
database, the items that arrive queue up and go together in the next one, so batches
grow with load and a lone call waits for nobody. Each caller gets its own item's
result: a value, an error of its own, or the error of the batch its item was in.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class Batcher(Generic[Item, Result]):
    """Runs `run` on batches of submitted items, one batch at a time.

    `run` takes the items in submission order and returns one outcome per item, in the
    same order: its result, or an exception to raise to that item's caller alone. An
    item whose caller has given up (cancelled) before its batch starts is left out, so
    a write nobody will acknowledge is not made.
    """

    def __init__(
        self,
        run: Callable[[list[Item]], Awaitable[Sequence[Result | Exception]]],
        *,
        max_size: int = 256,
    ) -> None:
        if max_size < 1:
            raise ValueError("max_size must be at least 1")
        self._run = run
        self._max_size = max_size
        self._queue: list[tuple[Item, asyncio.Future[Result]]] = []
        self._worker: asyncio.Task[None] | None = None

    async def submit(self, item: Item) -> Result:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        self._queue.append((item, future))
        if self._worker is None:
            self._worker = loop.create_task(self._drain())
        return await future

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch = [entry for entry in self._queue[: self._max_size] if not entry[1].done()]
                del self._queue[: self._max_size]
                if batch:
                    await self._run_batch(batch)
        finally:
            self._worker = None
            # Only when cancelled (the process is stopping): nobody learns a result.
            for _, future in self._queue:
                future.cancel()
            self._queue.clear()

    async def _run_batch(self, batch: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        try:
            results = await self._run([item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"a batch of {len(batch)} items gave {len(results)} results")
        except Exception as exc:  # noqa: BLE001 - raised to every caller in the batch
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        except BaseException:
            for _, future in batch:
                future.cancel()
            raise
        for (_, future), outcome in zip(batch, results, strict=True):
            if future.done():
                continue
            if isinstance(outcome, Exception):
                future.set_exception(outcome)
            else:
                future.set_result(outcome)
