from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest

from servicekit.batching import Batcher


class Recorder:
    """A batch function that records its batches and can be held at the database."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.gate.set()
        self.entered = asyncio.Event()

    async def __call__(self, items: list[int]) -> list[int | Exception]:
        self.batches.append(items)
        self.entered.set()
        await self.gate.wait()
        return [ValueError(f"bad {i}") if i < 0 else i * 10 for i in items]


async def test_a_lone_item_goes_alone() -> None:
    run = Recorder()
    batcher = Batcher(run)
    assert await batcher.submit(1) == 10
    assert run.batches == [[1]]


async def test_items_submitted_together_share_one_batch() -> None:
    run = Recorder()
    batcher = Batcher(run)
    assert await asyncio.gather(*(batcher.submit(i) for i in range(5))) == [0, 10, 20, 30, 40]
    assert run.batches == [[0, 1, 2, 3, 4]]


async def test_items_arriving_during_a_batch_go_together_in_the_next() -> None:
    run = Recorder()
    run.gate.clear()
    batcher = Batcher(run)
    first = asyncio.ensure_future(batcher.submit(1))
    await run.entered.wait()
    later = [asyncio.ensure_future(batcher.submit(i)) for i in (2, 3, 4)]
    await asyncio.sleep(0)
    assert run.batches == [[1]]  # one batch at a time
    run.gate.set()
    assert await first == 10
    assert await asyncio.gather(*later) == [20, 30, 40]
    assert run.batches == [[1], [2, 3, 4]]


async def test_batches_are_capped_at_max_size() -> None:
    run = Recorder()
    batcher = Batcher(run, max_size=2)
    assert await asyncio.gather(*(batcher.submit(i) for i in range(5))) == [0, 10, 20, 30, 40]
    assert run.batches == [[0, 1], [2, 3], [4]]


async def test_an_items_own_error_reaches_only_its_caller() -> None:
    batcher = Batcher(Recorder())
    results = await asyncio.gather(*(batcher.submit(i) for i in (1, -1, 2)), return_exceptions=True)
    assert results[0] == 10
    assert isinstance(results[1], ValueError)
    assert str(results[1]) == "bad -1"
    assert results[2] == 20


async def test_a_failed_batch_fails_every_caller_in_it_and_not_the_next() -> None:
    failures = 1

    async def run(items: list[int]) -> list[int | Exception]:
        nonlocal failures
        if failures:
            failures -= 1
            raise ConnectionError("database down")
        return list(items)

    batcher = Batcher(run)
    results = await asyncio.gather(*(batcher.submit(i) for i in range(3)), return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results)
    assert await batcher.submit(7) == 7


async def test_a_batch_that_miscounts_its_results_is_an_error_not_a_hang() -> None:
    async def run(items: list[int]) -> Sequence[int | Exception]:
        return items[:-1]

    batcher = Batcher(run)
    with pytest.raises(RuntimeError, match="a batch of 2 items gave 1 results"):
        await asyncio.gather(batcher.submit(1), batcher.submit(2))


async def test_an_item_whose_caller_gave_up_is_left_out() -> None:
    run = Recorder()
    run.gate.clear()
    batcher = Batcher(run)
    first = asyncio.ensure_future(batcher.submit(1))
    await run.entered.wait()
    abandoned = asyncio.ensure_future(batcher.submit(2))
    kept = asyncio.ensure_future(batcher.submit(3))
    await asyncio.sleep(0)
    abandoned.cancel()
    run.gate.set()
    assert await first == 10
    assert await kept == 30
    assert run.batches == [[1], [3]]


async def test_with_room_for_two_batches_a_slow_one_holds_up_only_its_own_items() -> None:
    first_started, release_first = asyncio.Event(), asyncio.Event()
    batches: list[list[int]] = []

    async def run(items: list[int]) -> Sequence[int | Exception]:
        batches.append(items)
        if items == [1]:
            first_started.set()
            await release_first.wait()
        return items

    batcher = Batcher(run, max_in_flight=2)
    first = asyncio.ensure_future(batcher.submit(1))
    await first_started.wait()
    assert list(await asyncio.gather(batcher.submit(2), batcher.submit(3))) == [2, 3]
    assert not first.done()
    release_first.set()
    assert await first == 1
    assert batches == [[1], [2, 3]]


async def test_stopping_cancels_the_callers_instead_of_leaving_them_waiting() -> None:
    run = Recorder()
    run.gate.clear()
    batcher = Batcher(run)
    callers = [asyncio.ensure_future(batcher.submit(i)) for i in range(3)]
    await run.entered.wait()
    queued = asyncio.ensure_future(batcher.submit(9))
    await asyncio.sleep(0)
    # What asyncio.run does to the batcher's own tasks when the process stops.
    for task in asyncio.all_tasks():
        if task not in (*callers, queued, asyncio.current_task()):
            task.cancel()
    results = await asyncio.gather(*callers, queued, return_exceptions=True)
    assert all(isinstance(r, asyncio.CancelledError) for r in results)
    # The next item starts anew.
    run.gate.set()
    assert await batcher.submit(5) == 50
