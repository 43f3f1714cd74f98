from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from servicekit.errors import ResourceExhausted
from users_service.passwords import PasswordHasher


class Spy:
    """Records which argon2 calls run, with what, and on which thread."""

    def __init__(self, real: Any) -> None:
        self._real = real
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.threads: list[str] = []

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._real, name)
        if name not in ("hash", "verify"):
            return attribute

        def recorded(*args: Any) -> Any:
            self.calls.append((name, args))
            self.threads.append(threading.current_thread().name)
            return attribute(*args)

        return recorded


@pytest.fixture
def hasher() -> Iterator[PasswordHasher]:
    hasher = PasswordHasher(memory_kib=8192, time_cost=1, parallelism=1, workers=1)
    yield hasher
    hasher.close()


async def test_hashes_are_argon2id_and_verify(hasher: PasswordHasher) -> None:
    hashed = await hasher.hash("correct horse")
    assert hashed.startswith("$argon2id$v=19$m=8192,t=1,p=1$")
    assert "correct horse" not in hashed
    assert await hasher.verify(hashed, "correct horse")
    assert not await hasher.verify(hashed, "wrong horse")
    assert not await hasher.verify("not a hash", "correct horse")


async def test_no_hash_costs_a_real_verification_and_fails(
    hasher: PasswordHasher, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = Spy(hasher._argon2)
    monkeypatch.setattr(hasher, "_argon2", spy)
    assert not await hasher.verify(None, "anything")
    assert [name for name, _ in spy.calls] == ["verify"]
    assert spy.calls[0][1][0].startswith("$argon2id$")


async def test_hashing_runs_off_the_event_loop(
    hasher: PasswordHasher, monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = Spy(hasher._argon2)
    monkeypatch.setattr(hasher, "_argon2", spy)
    await hasher.hash("correct horse")
    await hasher.verify(None, "correct horse")
    assert len(spy.threads) == 2
    assert all(name.startswith("argon2") for name in spy.threads)
    assert threading.current_thread().name not in spy.threads


async def test_hashes_of_older_parameters_need_rehash(hasher: PasswordHasher) -> None:
    stronger = PasswordHasher(memory_kib=16384, time_cost=2, parallelism=1, workers=1)
    try:
        old = await hasher.hash("pw pw pw pw")
        assert not hasher.needs_rehash(old)
        assert stronger.needs_rehash(old)
        assert await stronger.verify(old, "pw pw pw pw")
    finally:
        stronger.close()


class Gate:
    """Holds every hash on its worker thread until opened."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.opened = threading.Event()

    def hold(self, *_args: Any) -> bool:
        self.entered.set()
        assert self.opened.wait(10), "the test never opened the gate"
        return False


@pytest.fixture
def gate(monkeypatch: pytest.MonkeyPatch) -> Iterator[Gate]:
    gate = Gate()
    monkeypatch.setattr(PasswordHasher, "_verify", lambda _self, *args: gate.hold(*args))
    yield gate
    gate.opened.set()


async def test_past_the_queue_a_check_is_refused_at_once(gate: Gate) -> None:
    hasher = PasswordHasher(memory_kib=8192, time_cost=1, parallelism=1, workers=1, max_waiting=1)
    try:
        running = asyncio.create_task(hasher.verify(None, "pw"))
        await asyncio.to_thread(gate.entered.wait, 10)
        waiting = asyncio.create_task(hasher.verify(None, "pw"))
        await asyncio.sleep(0)  # let it take its place in the queue
        assert hasher.pending == 2
        with pytest.raises(ResourceExhausted) as refused:
            await hasher.verify(None, "pw")
        assert refused.value.reason == "PASSWORD_HASH_QUEUE_FULL"
        assert refused.value.retry_after == 1.0
        gate.opened.set()
        assert list(await asyncio.gather(running, waiting)) == [False, False]
        assert hasher.pending == 0
    finally:
        hasher.close()


async def test_a_check_given_up_while_waiting_frees_its_place(gate: Gate) -> None:
    hasher = PasswordHasher(memory_kib=8192, time_cost=1, parallelism=1, workers=1, max_waiting=1)
    try:
        running = asyncio.create_task(hasher.verify(None, "pw"))
        await asyncio.to_thread(gate.entered.wait, 10)
        waiting = asyncio.create_task(hasher.verify(None, "pw"))
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert hasher.pending == 1  # the running one keeps its place until it ends
        again = asyncio.create_task(hasher.verify(None, "pw"))
        await asyncio.sleep(0)
        gate.opened.set()
        assert list(await asyncio.gather(running, again)) == [False, False]
        assert hasher.pending == 0
    finally:
        hasher.close()
