"""Concurrent identical requests share one upstream call ("single flight")."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass
class _Call(Generic[T]):
    task: asyncio.Task[T]
    waiters: int = 0


class SingleFlight(Generic[T]):
    """Runs one `work` per key at a time; callers of a busy key wait for its result.

    The work runs in a task of its own, so a caller that gives up (cancels) leaves it
    running for the others; it is cancelled only when nobody is waiting any more.
    """

    def __init__(self) -> None:
        self._calls: dict[str, _Call[T]] = {}

    def busy(self, key: str) -> bool:
        return key in self._calls

    async def run(self, key: str, work: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """`work`'s result, and whether it was shared from another caller's call."""
        call = self._calls.get(key)
        shared = call is not None
        if call is None:
            call = _Call(asyncio.ensure_future(work()))
            self._calls[key] = call
            call.task.add_done_callback(lambda _: self._forget(key, call))
        call.waiters += 1
        try:
            return await asyncio.shield(call.task), shared
        finally:
            call.waiters -= 1
            if call.waiters == 0 and not call.task.done():
                call.task.cancel()

    def _forget(self, key: str, call: _Call[T]) -> None:
        if self._calls.get(key) is call:
            del self._calls[key]
        if not call.task.cancelled():
            # Mark the outcome as seen: every waiter that wanted it already has it.
            call.task.exception()
