"""The rules of keyed writes (servicekit.idempotency) against an in-memory key table."""

from __future__ import annotations

import asyncio
import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from servicekit.authz import Caller, Role
from servicekit.errors import InvalidArgument, ServiceError, Unavailable
from servicekit.idempotency import (
    KEY_IN_FLIGHT,
    KEY_REUSED,
    IdempotentWrites,
    KeyRecord,
    KeyTaken,
    RequestKey,
    fingerprint,
    parse_request_id,
    scope_of,
)

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=UTC)
SERVICE = Caller.service_account("gateway", frozenset())
USER = Caller.account(uuid.uuid4(), Role.USER, uuid.uuid4())
REQUEST_ID = str(uuid.uuid4())


class Keys:
    """A key table: what a repository's write would record, by its primary key."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, uuid.UUID], KeyRecord] = {}
        self.prunes = 0

    def insert(self, record: KeyRecord | None) -> None:
        assert record is not None
        if (record.scope, record.request_id) in self.rows:
            raise KeyTaken
        self.rows[record.scope, record.request_id] = record

    async def find(self, scope: str, request_id: uuid.UUID) -> KeyRecord | None:
        return self.rows.get((scope, request_id))

    async def prune(self, now: datetime) -> int:
        self.prunes += 1
        expired = [k for k, record in self.rows.items() if record.expire_time <= now]
        for k in expired:
            del self.rows[k]
        return len(expired)


class Clock:
    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> datetime:
        return self.now


class Service:
    """A service whose write makes a thing (a uuid) and records its key with it."""

    def __init__(self, keys: Keys, writes: IdempotentWrites) -> None:
        self.keys = keys
        self.writes = writes
        self.made: list[uuid.UUID] = []
        self.started = asyncio.Event()
        self.release: asyncio.Event | None = None

    async def create(self, key: RequestKey | None) -> uuid.UUID:
        return await self.writes.run(key, write=lambda: self._write(key), replay=self._replay)

    async def _write(self, key: RequestKey | None) -> uuid.UUID:
        self.started.set()
        if self.release is not None:
            await self.release.wait()
        made = uuid.uuid4()
        if key is not None:
            self.keys.insert(self.writes.record(key, made))
        self.made.append(made)
        return made

    async def _replay(self, made: uuid.UUID) -> uuid.UUID:
        return made


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def keys() -> Keys:
    return Keys()


@pytest.fixture
def service(keys: Keys, clock: Clock) -> Service:
    return Service(keys, IdempotentWrites(keys, ttl=timedelta(hours=24), clock=clock))


def status_of(error: ServiceError) -> tuple[grpc.StatusCode, str]:
    return error.code, error.reason


async def test_a_write_without_a_request_id_is_just_a_write(service: Service) -> None:
    assert service.writes.key(SERVICE, "", "CreateUser", "a@example.com") is None
    first, second = await service.create(None), await service.create(None)
    assert first != second
    assert service.keys.rows == {}


async def test_the_same_request_again_answers_the_first_result(service: Service) -> None:
    key = service.writes.key(SERVICE, REQUEST_ID, "CreateUser", "a@example.com", "A")
    first = await service.create(key)
    again = service.writes.key(SERVICE, REQUEST_ID, "CreateUser", "a@example.com", "A")
    assert await service.create(again) == first
    assert service.made == [first]
    (record,) = service.keys.rows.values()
    assert record.resource_id == first
    assert record.create_time == NOW
    assert record.expire_time == NOW + timedelta(hours=24)


async def test_the_same_request_id_with_another_request_is_refused(service: Service) -> None:
    await service.create(service.writes.key(SERVICE, REQUEST_ID, "CreateUser", "a@x.io", "A"))
    other = service.writes.key(SERVICE, REQUEST_ID, "CreateUser", "b@x.io", "A")
    with pytest.raises(ServiceError) as raised:
        await service.create(other)
    assert status_of(raised.value) == (grpc.StatusCode.FAILED_PRECONDITION, KEY_REUSED)
    assert len(service.made) == 1


async def test_a_request_id_is_its_callers_own(service: Service) -> None:
    mine = await service.create(service.writes.key(SERVICE, REQUEST_ID, "m", "one"))
    theirs = await service.create(service.writes.key(USER, REQUEST_ID, "m", "two"))
    other_service = Caller.service_account("billing", frozenset())
    third = await service.create(service.writes.key(other_service, REQUEST_ID, "m", "one"))
    assert len({mine, theirs, third}) == 3
    assert scope_of(SERVICE) == "service:gateway"
    assert scope_of(USER) == f"user:{USER.user_id}"


async def test_a_request_still_running_here_refuses_its_retry(service: Service) -> None:
    service.release = asyncio.Event()
    key = service.writes.key(SERVICE, REQUEST_ID, "m", "one")
    first = asyncio.create_task(service.create(key))
    await service.started.wait()
    with pytest.raises(ServiceError) as raised:
        await service.create(key)
    assert status_of(raised.value) == (grpc.StatusCode.ABORTED, KEY_IN_FLIGHT)
    service.release.set()
    made = await first
    # Once it has finished, the retry gets its result.
    assert await service.create(key) == made
    assert service.made == [made]


async def test_a_key_recorded_elsewhere_meanwhile_answers_that_result(
    keys: Keys, clock: Clock
) -> None:
    """Two replicas, one table: the one that commits second answers the first's."""
    here = Service(keys, IdempotentWrites(keys, clock=clock))
    there = Service(keys, IdempotentWrites(keys, clock=clock))
    here.release = asyncio.Event()
    key = here.writes.key(SERVICE, REQUEST_ID, "m", "one")
    slow = asyncio.create_task(here.create(key))
    await here.started.wait()
    made_there = await there.create(key)
    here.release.set()
    assert await slow == made_there
    assert here.made == [] and there.made == [made_there]


async def test_a_key_taken_meanwhile_by_another_request_is_refused(
    keys: Keys, clock: Clock
) -> None:
    here = Service(keys, IdempotentWrites(keys, clock=clock))
    there = Service(keys, IdempotentWrites(keys, clock=clock))
    here.release = asyncio.Event()
    slow = asyncio.create_task(here.create(here.writes.key(SERVICE, REQUEST_ID, "m", "one")))
    await here.started.wait()
    await there.create(there.writes.key(SERVICE, REQUEST_ID, "m", "two"))
    here.release.set()
    with pytest.raises(ServiceError) as raised:
        await slow
    assert raised.value.reason == KEY_REUSED


async def test_an_expired_key_counts_as_new_and_is_pruned(service: Service, clock: Clock) -> None:
    first = await service.create(service.writes.key(SERVICE, REQUEST_ID, "m", "one"))
    clock.now += timedelta(hours=24)
    # Another request now, which the expired key no longer refuses.
    second = await service.create(service.writes.key(SERVICE, REQUEST_ID, "m", "two"))
    assert second != first
    (record,) = service.keys.rows.values()
    assert record.resource_id == second


async def test_expired_keys_are_pruned_at_most_once_per_interval(keys: Keys, clock: Clock) -> None:
    service = Service(keys, IdempotentWrites(keys, clock=clock, prune_every=timedelta(hours=1)))
    await service.create(service.writes.key(SERVICE, str(uuid.uuid4()), "m", "one"))
    clock.now += timedelta(days=2)
    for _ in range(3):
        await service.create(service.writes.key(SERVICE, str(uuid.uuid4()), "m", "one"))
    # The first keyed write of the process pruned; the next ones were within the hour.
    assert keys.prunes == 1
    assert len(keys.rows) == 4


async def test_a_failed_prune_does_not_fail_the_committed_write(keys: Keys, clock: Clock) -> None:
    async def unavailable(now: datetime) -> int:
        raise Unavailable("the database is unavailable")

    keys.prune = unavailable  # type: ignore[method-assign]
    service = Service(keys, IdempotentWrites(keys, clock=clock))
    made = await service.create(service.writes.key(SERVICE, REQUEST_ID, "m", "one"))
    assert service.made == [made]


async def test_a_failed_write_leaves_no_key(service: Service) -> None:
    key = service.writes.key(SERVICE, REQUEST_ID, "m", "one")

    async def failing() -> uuid.UUID:
        raise Unavailable("the provider is down")

    with pytest.raises(Unavailable):
        await service.writes.run(key, write=failing, replay=service._replay)
    # Neither recorded nor held: the retry runs.
    assert service.keys.rows == {}
    assert await service.create(key) == service.made[0]


def test_request_ids_are_uuids() -> None:
    assert parse_request_id("") is None
    assert parse_request_id(REQUEST_ID) == uuid.UUID(REQUEST_ID)
    for bad, says in (("abc", "must be a UUID"), (str(uuid.UUID(int=0)), "nil UUID")):
        with pytest.raises(InvalidArgument) as raised:
            parse_request_id(bad)
        (violation,) = raised.value.violations
        assert violation.field == "request_id"
        assert says in violation.description


def test_the_fingerprint_is_a_sha256_of_the_fields_and_tells_their_bounds_apart() -> None:
    assert fingerprint("m", "a", "b") == fingerprint("m", "a", "b")
    assert fingerprint("m", "ab", "") != fingerprint("m", "a", "b")
    expected = hashlib.sha256(json.dumps(["m", "é"], ensure_ascii=False).encode()).hexdigest()
    assert fingerprint("m", "é") == expected
