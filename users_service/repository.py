"""All SQL of the users service: SQLAlchemy Core statements on the `users` table.

Core, not the ORM: a lookup by primary key is one compiled-and-cached statement and a
tuple, without an identity map or unit of work that a request-scoped read never uses.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Row, Table, insert, select, tuple_, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from servicekit.database import connect, utc
from users_service.domain import User
from users_service.models import UserRow

users = cast(Table, UserRow.__table__)
_USER_COLUMNS = (
    users.c.id,
    users.c.email,
    users.c.name,
    users.c.create_time,
    users.c.update_time,
    users.c.delete_time,
    users.c.revision,
)


class EmailTaken(Exception):
    """A live account already has this email (the unique index said so)."""


class UsersRepository:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    async def insert(self, user: User, *, email_key: str, password_hash: str) -> None:
        statement = insert(users).values(
            id=user.id,
            email=user.email,
            email_key=email_key,
            name=user.name,
            password_hash=password_hash,
            create_time=user.create_time,
            update_time=user.update_time,
            delete_time=None,
            revision=user.revision,
        )
        async with self._connect(write=True) as connection:
            await connection.execute(statement)

    async def get(self, user_id: uuid.UUID, *, include_deleted: bool = False) -> User | None:
        statement = select(*_USER_COLUMNS).where(users.c.id == user_id)
        if not include_deleted:
            statement = statement.where(users.c.delete_time.is_(None))
        async with self._connect(write=False) as connection:
            row = (await connection.execute(statement)).first()
        return _user(row) if row is not None else None

    async def get_live_with_hash_by_email(self, key: str) -> tuple[User, str] | None:
        statement = select(*_USER_COLUMNS, users.c.password_hash).where(
            users.c.email_key == key, users.c.delete_time.is_(None)
        )
        async with self._connect(write=False) as connection:
            row = (await connection.execute(statement)).first()
        return (_user(row), row.password_hash) if row is not None else None

    async def get_live_with_hash(self, user_id: uuid.UUID) -> tuple[User, str] | None:
        statement = select(*_USER_COLUMNS, users.c.password_hash).where(
            users.c.id == user_id, users.c.delete_time.is_(None)
        )
        async with self._connect(write=False) as connection:
            row = (await connection.execute(statement)).first()
        return (_user(row), row.password_hash) if row is not None else None

    async def list_page(
        self, *, after: tuple[datetime, uuid.UUID] | None, limit: int, show_deleted: bool
    ) -> list[User]:
        """Up to `limit` accounts in (create_time, id) order, after the `after` key."""
        statement = select(*_USER_COLUMNS).order_by(users.c.create_time, users.c.id).limit(limit)
        if not show_deleted:
            statement = statement.where(users.c.delete_time.is_(None))
        if after is not None:
            statement = statement.where(tuple_(users.c.create_time, users.c.id) > tuple_(*after))
        async with self._connect(write=False) as connection:
            rows = (await connection.execute(statement)).all()
        return [_user(row) for row in rows]

    async def update(
        self,
        user_id: uuid.UUID,
        values: Mapping[str, Any],
        *,
        now: datetime,
        expected_revision: int | None = None,
    ) -> User | None:
        """Change a live account; None if it is gone or its revision moved on."""
        statement = (
            update(users)
            .where(users.c.id == user_id, users.c.delete_time.is_(None))
            .values(**values, update_time=now, revision=users.c.revision + 1)
            .returning(*_USER_COLUMNS)
        )
        if expected_revision is not None:
            statement = statement.where(users.c.revision == expected_revision)
        async with self._connect(write=True) as connection:
            row = (await connection.execute(statement)).first()
        return _user(row) if row is not None else None

    async def set_deleted(self, user_id: uuid.UUID, *, deleted: bool, now: datetime) -> User | None:
        """Soft-delete (or restore) an account; None if it was not live (not deleted)."""
        in_state = users.c.delete_time.is_(None) if deleted else users.c.delete_time.is_not(None)
        statement = (
            update(users)
            .where(users.c.id == user_id, in_state)
            .values(
                delete_time=now if deleted else None,
                update_time=now,
                revision=users.c.revision + 1,
            )
            .returning(*_USER_COLUMNS)
        )
        async with self._connect(write=True) as connection:
            row = (await connection.execute(statement)).first()
        return _user(row) if row is not None else None

    async def replace_password_hash(
        self, user_id: uuid.UUID, *, old_hash: str, new_hash: str
    ) -> bool:
        """Swap the hash, unless it changed since `old_hash` was read (lost update)."""
        statement = (
            update(users)
            .where(
                users.c.id == user_id,
                users.c.delete_time.is_(None),
                users.c.password_hash == old_hash,
            )
            .values(password_hash=new_hash)
        )
        async with self._connect(write=True) as connection:
            result = await connection.execute(statement)
        return bool(result.rowcount)

    @asynccontextmanager
    async def _connect(self, *, write: bool) -> AsyncIterator[AsyncConnection]:
        try:
            async with connect(self._engine, write=write, what="users") as connection:
                yield connection
        except IntegrityError as exc:
            # The only unique key besides the random primary key is the live email.
            if "email_key" in str(exc.orig):
                raise EmailTaken from exc
            raise


def _user(row: Row[*tuple[Any, ...]]) -> User:
    return User(
        id=row.id,
        email=row.email,
        name=row.name,
        create_time=utc(row.create_time),
        update_time=utc(row.update_time),
        delete_time=utc(row.delete_time) if row.delete_time is not None else None,
        revision=row.revision,
    )
