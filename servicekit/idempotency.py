"""Idempotent writes: a request id (AIP-155; the gateway's `Idempotency-Key` header)
makes a retried write answer the first one's result instead of writing again.

    key = writes.key(caller, request.request_id, "CreateUser", email, name)
    user = await writes.run(key, write=lambda: create(key), replay=read_back)

- **Where.** A key's record (its caller's scope, the id, a fingerprint of the request,
  the id of what the request made) lives in the service's own database, and the
  service's repository writes it in the same transaction as what the request made:
  a committed write always has its key, so a retry is answered even when the first
  answer was lost with a dead replica. Failed requests leave no record: a retry runs
  again.
- **Same key, other request.** The fingerprint is a SHA-256 of the request's fields
  as sent (never the request itself); another fingerprint is FAILED_PRECONDITION with
  reason IDEMPOTENCY_KEY_REUSED (the gateway answers 422).
- **Concurrent requests with one key.** On one replica the second is ABORTED with
  reason IDEMPOTENCY_KEY_IN_FLIGHT at once (409). On two replicas both run; the key's
  primary key lets one commit, the other's transaction rolls back with its write, and
  it answers the first one's result (or IDEMPOTENCY_KEY_REUSED). Nothing is written
  before the work, so a replica that dies mid-request leaves nothing behind that
  would refuse the retry.
- **Scope.** Keys are the caller's: a user's (`user:<id>`) or a service account's
  (`service:<name>`), so one caller's key never meets another's.
- **Expiry.** A key lasts `ttl` (24 h by default); one past it counts as never seen.
  Expired keys are deleted by the keyed writes themselves, at most once per
  `prune_every` in each process.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol, TypeVar

from servicekit.authz import Caller
from servicekit.errors import Aborted, FailedPrecondition, InvalidArgument, Unavailable

log = logging.getLogger(__name__)

KEY_REUSED = "IDEMPOTENCY_KEY_REUSED"
KEY_IN_FLIGHT = "IDEMPOTENCY_KEY_IN_FLIGHT"
REQUEST_ID_FIELD = "request_id"
DEFAULT_TTL = timedelta(hours=24)
DEFAULT_PRUNE_EVERY = timedelta(minutes=10)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class RequestKey:
    """A write's request id in its caller's scope, and what the request looked like."""

    scope: str
    request_id: uuid.UUID
    fingerprint: str


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """What is stored of a key: the key, and the id of what its request made."""

    scope: str
    request_id: uuid.UUID
    fingerprint: str
    resource_id: uuid.UUID
    create_time: datetime
    expire_time: datetime


class KeyTaken(Exception):
    """The write's key is already recorded (the database's primary key said so): its
    transaction rolled back, and nothing of the write was stored."""


class KeyStore(Protocol):
    """A service's table of keys (servicekit.idempotency_records.KeyRecords)."""

    async def find(self, scope: str, request_id: uuid.UUID) -> KeyRecord | None: ...

    async def prune(self, now: datetime) -> int: ...


def scope_of(caller: Caller) -> str:
    """Whose keys a caller's are: its service account's, else its account's."""
    if caller.service is not None:
        return f"service:{caller.service}"
    return f"user:{caller.user_id}"


def fingerprint(*fields: str) -> str:
    """SHA-256 (hex) of a request's fields: equal for equal requests, and one-way."""
    # JSON keeps field boundaries unambiguous whatever the fields hold.
    return hashlib.sha256(json.dumps(fields, ensure_ascii=False).encode()).hexdigest()


def parse_request_id(raw: str, field: str = REQUEST_ID_FIELD) -> uuid.UUID | None:
    """The request id of a write; None when it has none. A UUID (AIP-155), not nil."""
    if not raw:
        return None
    try:
        parsed = uuid.UUID(raw)
    except ValueError:
        raise InvalidArgument.field(field, "must be a UUID") from None
    if parsed.int == 0:
        raise InvalidArgument.field(field, "must not be the nil UUID")
    return parsed


def key_reused() -> FailedPrecondition:
    return FailedPrecondition(
        "this request id (idempotency key) was used with another request; "
        "a new request needs a new one",
        reason=KEY_REUSED,
    )


def key_in_flight() -> Aborted:
    return Aborted(
        "a request with this request id (idempotency key) is still being processed; "
        "retry when it has finished",
        reason=KEY_IN_FLIGHT,
    )


class IdempotentWrites:
    """One service's keyed writes: the rules above, around the writes themselves."""

    def __init__(
        self,
        store: KeyStore,
        *,
        ttl: timedelta = DEFAULT_TTL,
        prune_every: timedelta = DEFAULT_PRUNE_EVERY,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._store = store
        self._ttl = ttl
        self._prune_every = prune_every.total_seconds()
        self._clock = clock
        # Keys whose requests run in this process now.
        self._in_flight: set[tuple[str, uuid.UUID]] = set()
        self._next_prune = time.monotonic()

    def key(self, caller: Caller, request_id: str, *request: str) -> RequestKey | None:
        """The key of a write from `caller`, or None without a request id. `request`:
        the method and the fields that make two requests the same request."""
        parsed = parse_request_id(request_id)
        if parsed is None:
            return None
        return RequestKey(scope_of(caller), parsed, fingerprint(*request))

    def record(self, key: RequestKey | None, resource_id: uuid.UUID) -> KeyRecord | None:
        """What the write keyed `key` stores beside `resource_id`, in its transaction."""
        if key is None:
            return None
        now = self._clock()
        return KeyRecord(
            key.scope, key.request_id, key.fingerprint, resource_id, now, now + self._ttl
        )

    async def run(
        self,
        key: RequestKey | None,
        *,
        write: Callable[[], Awaitable[T]],
        replay: Callable[[uuid.UUID], Awaitable[T]],
    ) -> T:
        """`write()`'s result, or for a key seen before, `replay(id of what it made)`.

        `write` stores `record(key, …)` with what it makes, raising KeyTaken when the
        key was recorded meanwhile (by a request elsewhere).
        """
        if key is None:
            return await write()
        with self.hold(key):
            made = await self.previous(key)
            if made is not None:
                return await replay(made)
            try:
                result = await write()
            except KeyTaken:
                return await replay(await self.winner(key))
        await self.written()
        return result

    @contextmanager
    def hold(self, key: RequestKey | None) -> Iterator[None]:
        """Marks `key`'s request as running here; ABORTED if one already is."""
        if key is None:
            yield
            return
        held = (key.scope, key.request_id)
        if held in self._in_flight:
            raise key_in_flight()
        self._in_flight.add(held)
        try:
            yield
        finally:
            self._in_flight.discard(held)

    async def previous(self, key: RequestKey) -> uuid.UUID | None:
        """The id of what an earlier request with `key` made; None if there was none
        (or it expired). IDEMPOTENCY_KEY_REUSED if that request was another."""
        record = await self._store.find(key.scope, key.request_id)
        if record is None:
            return None
        if record.expire_time <= self._clock():
            # As never seen; its row must go before this request's takes its place.
            await self._store.prune(self._clock())
            return None
        if record.fingerprint != key.fingerprint:
            raise key_reused()
        return record.resource_id

    async def winner(self, key: RequestKey) -> uuid.UUID:
        """After KeyTaken: what the request that recorded `key` first made."""
        made = await self.previous(key)
        if made is None:  # recorded and gone again at once: only an expiry does that
            raise key_in_flight()
        return made

    async def written(self) -> None:
        """After a keyed write: delete the expired keys, when it is time to."""
        now = time.monotonic()
        if now < self._next_prune:
            return
        self._next_prune = now + self._prune_every
        try:
            deleted = await self._store.prune(self._clock())
        except Unavailable:
            # The database's outage is logged once, by servicekit.database.
            return
        except Exception:
            # The write is committed: it is answered all the same.
            log.exception("deleting the expired idempotency keys failed")
            return
        if deleted:
            log.info("deleted %d expired idempotency keys", deleted)
