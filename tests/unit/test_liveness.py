"""servicekit.liveness: answers remembered for their ttl, forgotten on demand, shared."""

from __future__ import annotations

import asyncio

from servicekit.liveness import Liveness


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Owners:
    """A lookup that answers from a dict and counts its calls."""

    def __init__(self, owners: dict[str, str]) -> None:
        self.owners = owners
        self.calls: list[tuple[str, str]] = []

    async def __call__(self, key: str, credential: str) -> str | None:
        self.calls.append((key, credential))
        return self.owners.get(key)


async def test_an_answer_is_remembered_for_its_ttl() -> None:
    clock = Clock()
    lookup = Owners({"s1": "u1"})
    live = Liveness(lookup, ttl=2.0, clock=clock)
    assert await live.owner("s1", "token") == "u1"
    del lookup.owners["s1"]
    clock.now += 1.9
    assert await live.owner("s1") == "u1"
    clock.now += 0.2
    assert await live.owner("s1") is None
    assert lookup.calls == [("s1", "token"), ("s1", "")]


async def test_not_live_is_remembered_too() -> None:
    lookup = Owners({})
    live = Liveness(lookup, ttl=60)
    assert await live.owner("gone") is None
    assert await live.owner("gone") is None
    assert len(lookup.calls) == 1


async def test_forgetting_sessions_and_accounts() -> None:
    lookup = Owners({"s1": "u1", "s2": "u1", "s3": "u1", "s4": "u2"})
    live = Liveness(lookup, ttl=60)
    for key in ("s1", "s2", "s3", "s4"):
        await live.owner(key)
    lookup.owners.clear()
    live.forget("s4")
    assert await live.owner("s4") is None
    live.forget_user("u1", keep="s2")
    assert [await live.owner(s) for s in ("s1", "s2", "s3")] == [None, "u1", None]
    live.forget_user("u1")
    assert await live.owner("s2") is None


async def test_concurrent_checks_share_one_lookup() -> None:
    release = asyncio.Event()
    calls = 0

    async def slow(key: str, credential: str) -> str | None:
        nonlocal calls
        calls += 1
        await release.wait()
        return "u1"

    live = Liveness(slow, ttl=60)
    checks = [asyncio.ensure_future(live.owner("s1")) for _ in range(5)]
    await asyncio.sleep(0)
    checks[0].cancel()  # one waiter giving up does not cancel the others' lookup
    release.set()
    answers = await asyncio.gather(*checks[1:])
    assert answers == ["u1"] * 4
    assert calls == 1


async def test_bounded_and_can_be_off() -> None:
    lookup = Owners({f"s{i}": "u" for i in range(10)})
    off = Liveness(lookup, ttl=0)
    await off.owner("s1")
    await off.owner("s1")
    assert len(lookup.calls) == 2
    clock = Clock()
    full = Liveness(lookup, ttl=10, max_entries=4, clock=clock)
    for i in range(10):
        await full.owner(f"s{i}")
        clock.now += 1
    assert len(full._known) <= 4
    assert await full.owner("s9") == "u"
