"""ai_service.slots: a user's share of the provider's slots, and the shared total."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from ai_service.slots import ProviderSlots
from servicekit.errors import DeadlineExceeded

ADA, BOB = uuid.uuid4(), uuid.uuid4()


def deadline(seconds: float) -> float:
    return asyncio.get_running_loop().time() + seconds


async def test_a_user_waits_for_their_own_slot_while_others_pass() -> None:
    slots = ProviderSlots(total=2, per_user=1)
    async with slots.slot(ADA, deadline(5)):
        with pytest.raises(DeadlineExceeded) as refused:
            async with slots.slot(ADA, deadline(0.05)):
                pass
        assert refused.value.reason == "PROVIDER_BUSY"
        async with slots.slot(BOB, deadline(0.05)):
            pass


async def test_the_shared_total_bounds_everyone() -> None:
    slots = ProviderSlots(total=2, per_user=2)
    async with slots.slot(ADA, deadline(5)), slots.slot(ADA, deadline(5)):
        with pytest.raises(DeadlineExceeded):
            async with slots.slot(BOB, deadline(0.05)):
                pass


async def test_a_freed_slot_goes_to_the_next_waiter_and_nothing_is_left_behind() -> None:
    slots = ProviderSlots(total=1, per_user=1)
    entered = asyncio.Event()

    async def second() -> None:
        async with slots.slot(BOB, deadline(5)):
            entered.set()

    async with slots.slot(ADA, deadline(5)):
        waiting = asyncio.ensure_future(second())
        await asyncio.sleep(0)
        assert not entered.is_set()
    await waiting
    assert entered.is_set()
    assert slots.users_waiting_or_running() == 0


async def test_a_cancelled_waiter_gives_back_what_it_held() -> None:
    slots = ProviderSlots(total=1, per_user=1)
    async with slots.slot(ADA, deadline(5)):
        waiting = asyncio.ensure_future(slots.slot(BOB, deadline(5)).__aenter__())
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
    assert slots.users_waiting_or_running() == 0
    async with slots.slot(BOB, deadline(0.05)):
        pass


def test_the_share_fits_the_total() -> None:
    with pytest.raises(ValueError, match="per_user"):
        ProviderSlots(total=2, per_user=3)
