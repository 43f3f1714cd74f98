from __future__ import annotations

import asyncio

import pytest

from ai_service.inflight import SingleFlight


async def test_concurrent_callers_share_one_run() -> None:
    flights: SingleFlight[int] = SingleFlight()
    runs = 0
    release = asyncio.Event()

    async def work() -> int:
        nonlocal runs
        runs += 1
        await release.wait()
        return 42

    callers = [asyncio.ensure_future(flights.run("k", work)) for _ in range(5)]
    await asyncio.sleep(0)
    assert flights.busy("k")
    release.set()
    results = await asyncio.gather(*callers)
    assert runs == 1
    assert sorted(shared for _, shared in results) == [False, True, True, True, True]
    assert {value for value, _ in results} == {42}
    assert not flights.busy("k")


async def test_errors_reach_every_caller_and_are_not_remembered() -> None:
    flights: SingleFlight[int] = SingleFlight()
    release = asyncio.Event()

    async def failing() -> int:
        await release.wait()
        raise ValueError("upstream broke")

    callers = [asyncio.ensure_future(flights.run("k", failing)) for _ in range(3)]
    await asyncio.sleep(0)
    release.set()
    outcomes = await asyncio.gather(*callers, return_exceptions=True)
    assert all(isinstance(o, ValueError) for o in outcomes)

    async def working() -> int:
        return 7

    assert await flights.run("k", working) == (7, False)


async def test_a_caller_that_gives_up_leaves_the_work_to_the_others() -> None:
    flights: SingleFlight[str] = SingleFlight()
    release = asyncio.Event()
    cancelled = asyncio.Event()

    async def work() -> str:
        try:
            await release.wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "done"

    leader = asyncio.ensure_future(flights.run("k", work))
    await asyncio.sleep(0)
    follower = asyncio.ensure_future(flights.run("k", work))
    await asyncio.sleep(0)
    leader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await leader
    release.set()
    assert await follower == ("done", True)
    assert not cancelled.is_set()


async def test_the_work_is_cancelled_when_nobody_waits() -> None:
    flights: SingleFlight[str] = SingleFlight()
    cancelled = asyncio.Event()

    async def work() -> str:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "never"

    only = asyncio.ensure_future(flights.run("k", work))
    await asyncio.sleep(0)
    only.cancel()
    with pytest.raises(asyncio.CancelledError):
        await only
    await asyncio.wait_for(cancelled.wait(), 5)
