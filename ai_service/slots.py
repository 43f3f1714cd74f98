"""The provider's concurrency slots, shared so that no one user can take them all.

A call takes one of the user's own slots first (at most `per_user` at once), then one
of the `total` shared ones. A user who sends 48 slow streams holds `per_user` shared
slots and queues the rest behind their own limit, so everyone else still finds the
other `total - per_user` free. Both waits end at the call's deadline.
"""

from __future__ import annotations

import asyncio
import uuid
from contextlib import AsyncExitStack
from types import TracebackType

from servicekit.errors import DeadlineExceeded

PROVIDER_BUSY = "PROVIDER_BUSY"


class ProviderSlots:
    def __init__(self, total: int, per_user: int) -> None:
        if not 1 <= per_user <= total:
            raise ValueError("per_user must be between 1 and total")
        self.total = total
        self.per_user = per_user
        self._shared = asyncio.Semaphore(total)
        # Only users with a call in flight or waiting have an entry (no growth with
        # the number of users ever seen).
        self._users: dict[uuid.UUID, _UserSlots] = {}

    def slot(self, user: uuid.UUID, deadline: float) -> Slot:
        """One slot for `user`'s call, to hold with `async with` until its deadline."""
        return Slot(self, user, deadline)

    def users_waiting_or_running(self) -> int:
        return len(self._users)

    def _enter(self, user: uuid.UUID) -> _UserSlots:
        slots = self._users.get(user)
        if slots is None:
            slots = self._users[user] = _UserSlots(asyncio.Semaphore(self.per_user))
        slots.holders += 1
        return slots

    def _leave(self, user: uuid.UUID, slots: _UserSlots) -> None:
        slots.holders -= 1
        if slots.holders == 0:
            del self._users[user]


class _UserSlots:
    __slots__ = ("holders", "semaphore")

    def __init__(self, semaphore: asyncio.Semaphore) -> None:
        self.semaphore = semaphore
        # Calls of this user holding or waiting for a slot.
        self.holders = 0


class Slot:
    def __init__(self, slots: ProviderSlots, user: uuid.UUID, deadline: float) -> None:
        self._slots = slots
        self._user = user
        self._deadline = deadline
        self._held = AsyncExitStack()

    async def __aenter__(self) -> None:
        own = self._slots._enter(self._user)
        self._held.callback(self._slots._leave, self._user, own)
        try:
            async with asyncio.timeout_at(self._deadline):
                await own.semaphore.acquire()
                self._held.callback(own.semaphore.release)
                await self._slots._shared.acquire()
                self._held.callback(self._slots._shared.release)
        except TimeoutError:
            await self._held.aclose()
            raise DeadlineExceeded(
                "no provider slot became free before the call's deadline",
                reason=PROVIDER_BUSY,
            ) from None
        except BaseException:
            await self._held.aclose()
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._held.aclose()
