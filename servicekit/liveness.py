"""Whether a session (or an account) is still live, asked once and remembered briefly.

A verified access token proves who signed it and until when, not that its session was
not ended since (logout, password change, deletion). Whoever accepts tokens asks the
owner of sessions - the users service's own table, or its `BatchGetSessions` - and
remembers the answer for `ttl` seconds, so the hot path pays a dict lookup, not a round
trip. An end made through this process is forgotten at once (`forget`,
`forget_user`); an end made elsewhere takes effect here within `ttl` seconds.
Concurrent checks of one key share one lookup.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

# The lookup: the owner (user id) of a live session, or None when it is not live. It
# is given the key and the credential of the call that asks (to ask with, if it must).
Lookup = Callable[[str, str], Awaitable[str | None]]


class Liveness:
    def __init__(
        self,
        lookup: Lookup,
        *,
        ttl: float,
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lookup = lookup
        self._ttl = ttl
        self._max_entries = max_entries
        self._clock = clock
        # key -> (owner or None when not live, answer good until)
        self._known: dict[str, tuple[str | None, float]] = {}
        self._asking: dict[str, asyncio.Future[str | None]] = {}

    async def owner(self, key: str, credential: str = "") -> str | None:
        """The owner of `key` when it is live, else None; cached for `ttl` seconds."""
        entry = self._known.get(key)
        if entry is not None:
            if entry[1] > self._clock():
                return entry[0]
            del self._known[key]
        asking = self._asking.get(key)
        if asking is None:
            asking = asyncio.ensure_future(self._ask(key, credential))
            self._asking[key] = asking
        # Shielded: one waiter giving up must not cancel the others' lookup.
        return await asyncio.shield(asking)

    def forget(self, key: str) -> None:
        self._known.pop(key, None)

    def forget_user(self, owner: str, *, keep: str | None = None) -> None:
        """Forget every key of `owner` (but `keep`): its sessions have just ended."""
        for key in [k for k, (o, _) in self._known.items() if o == owner and k != keep]:
            del self._known[key]

    async def _ask(self, key: str, credential: str) -> str | None:
        try:
            owner = await self._lookup(key, credential)
        finally:
            del self._asking[key]
        if self._ttl > 0:
            if len(self._known) >= self._max_entries:
                self._prune()
            self._known[key] = (owner, self._clock() + self._ttl)
        return owner

    def _prune(self) -> None:
        now = self._clock()
        for key in [k for k, (_, until) in self._known.items() if until <= now]:
            del self._known[key]
        # Still full of fresh entries: drop the oldest half (dicts keep insertion order).
        if len(self._known) >= self._max_entries:
            for key in list(self._known)[: self._max_entries // 2]:
                del self._known[key]
