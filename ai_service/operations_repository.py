"""All SQL of batch operations: the `operations` and `operation_items` tables.

An item is finished once, by a conditional UPDATE (`... WHERE` it is still pending) in
the same transaction as the analysis it stores: when a restarted replica, or one that
took over an expired lease, streams a batch's results again, what was stored already is
skipped, never stored twice.

A replica works on an operation only while it holds its lease (`lease_owner` until
`lease_expire_time`), taken and renewed by conditional UPDATEs, which PostgreSQL and
SQLite both make atomic: two replicas never poll one batch at once.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Table, and_, func, insert, or_, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from ai_service.domain import Analysis
from ai_service.models import OperationItemRow, OperationRow, operation_keys
from ai_service.repository import analyses, analysis_row, newest_first
from servicekit.database import Database, utc
from servicekit.idempotency import KeyRecord, KeyTaken
from servicekit.idempotency_records import KeyRecords

operations = cast(Table, OperationRow.__table__)
items = cast(Table, OperationItemRow.__table__)


@dataclass(frozen=True, slots=True)
class ItemError:
    """Why an item has no analysis: a google.rpc.Code, its reason and message."""

    code: int
    reason: str
    message: str


@dataclass(frozen=True, slots=True)
class Operation:
    """An operation as stored, with its progress counted from its items."""

    id: uuid.UUID
    user_id: uuid.UUID
    model: str
    total: int
    provider_batch_ids: tuple[str, ...]
    cancel_requested: bool
    done: bool
    create_time: datetime
    update_time: datetime
    end_time: datetime | None
    succeeded: int = 0
    failed: int = 0

    @property
    def pending(self) -> int:
        return self.total - self.succeeded - self.failed

    @classmethod
    def new(cls, user_id: uuid.UUID, model: str, total: int, now: datetime) -> Operation:
        """A new operation of `total` texts, nothing done yet."""
        return cls(
            id=uuid.uuid4(),
            user_id=user_id,
            model=model,
            total=total,
            provider_batch_ids=(),
            cancel_requested=False,
            done=False,
            create_time=now,
            update_time=now,
            end_time=None,
        )


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one item: its analysis (filed under `cache_key`), or its error."""

    position: int
    result: Analysis | ItemError
    cache_key: str | None = None


@dataclass(frozen=True, slots=True)
class Item:
    """One text of an operation: its analysis's id, or its error, or neither yet."""

    position: int
    text: str | None
    provider_batch_id: str | None
    analysis_id: uuid.UUID | None
    error: ItemError | None


class OperationsRepository:
    def __init__(self, database: Database) -> None:
        self._database = database
        # The request ids of BatchAnalyzeTexts (servicekit.idempotency).
        self.keys = KeyRecords(operation_keys, database)

    async def create(
        self, operation: Operation, texts: Sequence[str], *, key: KeyRecord | None
    ) -> None:
        """Stores a new operation with its texts, and its request's key; KeyTaken when
        the key was recorded meanwhile (then nothing was stored)."""
        row = {
            "id": operation.id,
            "user_id": operation.user_id,
            "model": operation.model,
            "total": operation.total,
            "provider_batch_ids": [],
            "cancel_requested": False,
            "done": False,
            "create_time": operation.create_time,
            "update_time": operation.update_time,
        }
        texts_rows = [
            {"operation_id": operation.id, "position": i, "text": t} for i, t in enumerate(texts)
        ]

        def work(connection: Connection) -> None:
            if key is not None:
                self.keys.insert(connection, [key])
            connection.execute(insert(operations), [row])
            connection.execute(insert(items), texts_rows)

        try:
            await self._database.write(work)
        except IntegrityError as exc:
            if self.keys.taken(exc):
                raise KeyTaken from exc
            raise

    async def get(self, operation_id: uuid.UUID) -> Operation | None:
        statement = _with_counts().where(operations.c.id == operation_id)
        row = await self._database.read(lambda c: c.execute(statement).first())
        return _operation(row) if row is not None else None

    async def list_for_user(
        self, user_id: uuid.UUID, *, before: tuple[datetime, uuid.UUID] | None, limit: int
    ) -> list[Operation]:
        """Up to `limit` of a user's operations, newest first, older than `before`."""
        statement = newest_first(
            _with_counts().where(operations.c.user_id == user_id), operations, before, limit
        )
        rows = await self._database.read(lambda c: c.execute(statement).all())
        return [_operation(row) for row in rows]

    async def items(self, operation_id: uuid.UUID, *, pending_only: bool = False) -> list[Item]:
        """The operation's items in order (only the unfinished ones, if asked)."""
        statement = (
            select(items).where(items.c.operation_id == operation_id).order_by(items.c.position)
        )
        if pending_only:
            statement = statement.where(_pending())
        rows = await self._database.read(lambda c: c.execute(statement).all())
        return [_item(row) for row in rows]

    async def request_cancel(self, operation_id: uuid.UUID, now: datetime) -> None:
        statement = (
            update(operations)
            .where(operations.c.id == operation_id, operations.c.done.is_(False))
            .values(cancel_requested=True, update_time=now)
        )
        await self._database.write(lambda c: c.execute(statement))

    async def claimable(self, now: datetime, limit: int) -> list[uuid.UUID]:
        """Unfinished operations that no live lease holds, oldest first."""
        statement = (
            select(operations.c.id)
            .where(operations.c.done.is_(False), _lease_free(now))
            .order_by(operations.c.create_time)
            .limit(limit)
        )
        rows = await self._database.read(lambda c: c.execute(statement).all())
        return [row.id for row in rows]

    async def lease(
        self, operation_id: uuid.UUID, owner: str, now: datetime, until: datetime
    ) -> bool:
        """Takes or renews the operation's lease for `owner`; False when another
        replica holds a live one, or the operation is done."""
        statement = (
            update(operations)
            .where(
                operations.c.id == operation_id,
                operations.c.done.is_(False),
                or_(_lease_free(now), operations.c.lease_owner == owner),
            )
            .values(lease_owner=owner, lease_expire_time=until)
        )
        result = await self._database.write(lambda c: c.execute(statement))
        return bool(result.rowcount == 1)

    async def release(self, operation_id: uuid.UUID, owner: str) -> None:
        statement = (
            update(operations)
            .where(operations.c.id == operation_id, operations.c.lease_owner == owner)
            .values(lease_owner=None, lease_expire_time=None)
        )
        await self._database.write(lambda c: c.execute(statement))

    async def submitted(
        self, operation_id: uuid.UUID, batch_id: str, positions: Sequence[int], now: datetime
    ) -> None:
        """Records that the items at `positions` went into the provider batch `batch_id`."""

        def work(connection: Connection) -> None:
            ids = connection.execute(
                select(operations.c.provider_batch_ids).where(operations.c.id == operation_id)
            ).scalar_one()
            connection.execute(
                update(operations)
                .where(operations.c.id == operation_id)
                .values(provider_batch_ids=[*ids, batch_id], update_time=now)
            )
            connection.execute(
                update(items)
                .where(items.c.operation_id == operation_id, items.c.position.in_(positions))
                .values(provider_batch_id=batch_id)
            )

        await self._database.write(work)

    async def finish(
        self, operation_id: uuid.UUID, outcomes: Sequence[Outcome], now: datetime
    ) -> int:
        """Finishes each item with its analysis (stored with it) or its error, in one
        transaction; an item finished already is left as it is. How many were not."""

        def work(connection: Connection) -> int:
            finished = 0
            for outcome in outcomes:
                if isinstance(outcome.result, Analysis):
                    stored = _finish(
                        connection, operation_id, outcome.position, analysis_id=outcome.result.id
                    )
                    if stored:
                        row = analysis_row(outcome.result, outcome.cache_key)
                        connection.execute(insert(analyses), [row])
                else:
                    stored = _fail(connection, operation_id, [outcome.position], outcome.result)
                finished += stored
            if finished:
                _touch(connection, operation_id, now)
            return finished

        return await self._database.write(work)

    async def fail(
        self, operation_id: uuid.UUID, positions: Sequence[int], error: ItemError, now: datetime
    ) -> int:
        """Finishes the still pending items at `positions` with `error`; how many."""

        def work(connection: Connection) -> int:
            finished = _fail(connection, operation_id, positions, error)
            if finished:
                _touch(connection, operation_id, now)
            return finished

        return await self._database.write(work)

    async def end(self, operation_id: uuid.UUID, now: datetime) -> None:
        """Marks the operation done (its items are all finished) and frees its lease."""
        statement = (
            update(operations)
            .where(operations.c.id == operation_id)
            .values(
                done=True, end_time=now, update_time=now, lease_owner=None, lease_expire_time=None
            )
        )
        await self._database.write(lambda c: c.execute(statement))


def _touch(connection: Connection, operation_id: uuid.UUID, now: datetime) -> None:
    connection.execute(
        update(operations).where(operations.c.id == operation_id).values(update_time=now)
    )


def _pending() -> Any:
    return and_(items.c.analysis_id.is_(None), items.c.error_code.is_(None))


def _lease_free(now: datetime) -> Any:
    return or_(operations.c.lease_owner.is_(None), operations.c.lease_expire_time < now)


def _finish(
    connection: Connection, operation_id: uuid.UUID, position: int, *, analysis_id: uuid.UUID
) -> int:
    result = connection.execute(
        update(items)
        .where(items.c.operation_id == operation_id, items.c.position == position, _pending())
        .values(text=None, analysis_id=analysis_id)
    )
    return int(result.rowcount)


def _fail(
    connection: Connection, operation_id: uuid.UUID, positions: Sequence[int], error: ItemError
) -> int:
    result = connection.execute(
        update(items)
        .where(items.c.operation_id == operation_id, items.c.position.in_(positions), _pending())
        .values(
            text=None,
            error_code=error.code,
            error_reason=error.reason,
            error_message=error.message,
        )
    )
    return int(result.rowcount)


def _with_counts() -> Any:
    # Correlated counts, worked out for the rows returned only (after a page's LIMIT),
    # each through the items' operation_id index: a grouped subquery joined in counted
    # every user's items on each list.
    def count(column: Any) -> Any:
        mine = items.c.operation_id == operations.c.id
        return select(func.count(column)).where(mine).scalar_subquery()

    return select(
        operations,
        count(items.c.analysis_id).label("succeeded"),
        count(items.c.error_code).label("failed"),
    )


def _operation(row: Any) -> Operation:
    return Operation(
        id=row.id,
        user_id=row.user_id,
        model=row.model,
        total=row.total,
        provider_batch_ids=tuple(row.provider_batch_ids),
        cancel_requested=row.cancel_requested,
        done=row.done,
        create_time=utc(row.create_time),
        update_time=utc(row.update_time),
        end_time=utc(row.end_time) if row.end_time is not None else None,
        succeeded=int(row.succeeded),
        failed=int(row.failed),
    )


def _item(row: Any) -> Item:
    error = None
    if row.error_code is not None:
        error = ItemError(row.error_code, row.error_reason or "", row.error_message or "")
    return Item(row.position, row.text, row.provider_batch_id, row.analysis_id, error)
