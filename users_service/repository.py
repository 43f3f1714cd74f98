"""All SQL of the users service: SQLAlchemy Core statements on the `users` table.

Core, not the ORM: a lookup by primary key is one compiled-and-cached statement and a
tuple, without an identity map or unit of work that a request-scoped read never uses.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Collection, Mapping
from datetime import datetime
from typing import Any, TypeVar, cast

from sqlalchemy import Row, Select, Table, bindparam, insert, select, tuple_, update
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError

from servicekit.database import Database, utc
from servicekit.idempotency import KeyRecord, KeyTaken
from servicekit.idempotency_records import KeyRecords
from users_service.domain import User
from users_service.models import UserRow, sign_up_keys
from users_service.sessions_repository import EndReason, end_sessions

T = TypeVar("T")

users = cast(Table, UserRow.__table__)
_USER_COLUMNS = (
    users.c.id,
    users.c.email,
    users.c.name,
    users.c.create_time,
    users.c.update_time,
    users.c.delete_time,
    users.c.revision,
    users.c.role,
)


# The hot reads, built once: SQLAlchemy then finds their compiled form in its cache
# without rebuilding the statement and its cache key on every call.
_LIVE = users.c.delete_time.is_(None)
_GET_ANY = select(*_USER_COLUMNS).where(users.c.id == bindparam("id"))
_GET_LIVE = _GET_ANY.where(_LIVE)
_GET_MANY_LIVE = select(*_USER_COLUMNS).where(
    users.c.id.in_(bindparam("ids", expanding=True)), _LIVE
)
_GET_ANY_WITH_HASH = select(*_USER_COLUMNS, users.c.password_hash).where(
    users.c.id == bindparam("id")
)
_GET_WITH_HASH = _GET_ANY_WITH_HASH.where(_LIVE)
_GET_WITH_HASH_BY_EMAIL = select(*_USER_COLUMNS, users.c.password_hash).where(
    users.c.email_key == bindparam("key"), _LIVE
)


class EmailTaken(Exception):
    """A live account already has this email (the unique index said so)."""


class UsersRepository:
    def __init__(self, database: Database) -> None:
        self._database = database
        # The request ids of sign-ups (servicekit.idempotency).
        self.keys = KeyRecords(sign_up_keys, database)

    async def insert(
        self, user: User, *, email_key: str, password_hash: str, key: KeyRecord | None = None
    ) -> None:
        """Store a new account, and with it the key of the request that made it.

        EmailTaken when a live account has the email; KeyTaken when the key is recorded
        already (a sign-up elsewhere with the same request id committed first).
        """
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
            role=user.role,
        )

        def work(connection: Connection) -> None:
            if key is not None:
                self.keys.insert(connection, [key])
            connection.execute(statement)

        await self._write(work)

    async def get(self, user_id: uuid.UUID, *, include_deleted: bool = False) -> User | None:
        statement = _GET_ANY if include_deleted else _GET_LIVE
        row = await self._database.read(lambda c: c.execute(statement, {"id": user_id}).first())
        return _user(row) if row is not None else None

    async def get_many(self, user_ids: Collection[uuid.UUID]) -> list[User]:
        """The live accounts among `user_ids`, in no particular order."""
        rows = await self._database.read(
            lambda c: c.execute(_GET_MANY_LIVE, {"ids": list(user_ids)}).all()
        )
        return [_user(row) for row in rows]

    async def get_live_with_hash_by_email(self, key: str) -> tuple[User, str] | None:
        row = await self._database.read(
            lambda c: c.execute(_GET_WITH_HASH_BY_EMAIL, {"key": key}).first()
        )
        return (_user(row), row.password_hash) if row is not None else None

    async def get_live_with_hash(self, user_id: uuid.UUID) -> tuple[User, str] | None:
        return await self._get_with_hash(_GET_WITH_HASH, user_id)

    async def get_any_with_hash(self, user_id: uuid.UUID) -> tuple[User, str] | None:
        """The account, live or deleted, and its password hash."""
        return await self._get_with_hash(_GET_ANY_WITH_HASH, user_id)

    async def _get_with_hash(
        self, statement: Select[Any], user_id: uuid.UUID
    ) -> tuple[User, str] | None:
        row = await self._database.read(lambda c: c.execute(statement, {"id": user_id}).first())
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
        rows = await self._database.read(lambda c: c.execute(statement).all())
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
        row = await self._write(lambda c: c.execute(statement).first())
        return _user(row) if row is not None else None

    async def set_deleted(self, user_id: uuid.UUID, *, deleted: bool, now: datetime) -> User | None:
        """Soft-delete (or restore) an account; None if it was not live (not deleted).

        Deleting ends every session of the account in the same transaction; restoring
        brings none back.
        """
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
        ending = end_sessions(user_id, now=now, reason=EndReason.ACCOUNT_DELETED)

        def work(connection: Connection) -> Row[Any] | None:
            row = connection.execute(statement).first()
            if row is not None and deleted:
                connection.execute(ending)
            return row

        row = await self._write(work)
        return _user(row) if row is not None else None

    async def set_role(self, key: str, role: str, *, now: datetime) -> User | None:
        """Give the live account of email key `key` a role; None if there is none.

        Taking admin away ends the account's sessions, so no token outlives the role.
        """
        statement = (
            update(users)
            .where(users.c.email_key == key, _LIVE)
            .values(role=role, update_time=now, revision=users.c.revision + 1)
            .returning(*_USER_COLUMNS)
        )

        def work(connection: Connection) -> Row[Any] | None:
            row = connection.execute(statement).first()
            if row is not None and role != "admin":
                connection.execute(end_sessions(row.id, now=now, reason=EndReason.ROLE_REVOKED))
            return row

        row = await self._write(work)
        return _user(row) if row is not None else None

    async def replace_password_hash(
        self,
        user_id: uuid.UUID,
        *,
        old_hash: str,
        new_hash: str,
        end_sessions_but: uuid.UUID | None = None,
        now: datetime | None = None,
    ) -> bool:
        """Swap the hash, unless it changed since `old_hash` was read (lost update).

        With `now`, the account's other sessions (all but `end_sessions_but`) end in the
        same transaction: a password change logs out everyone else.
        """
        statement = (
            update(users)
            .where(
                users.c.id == user_id,
                users.c.delete_time.is_(None),
                users.c.password_hash == old_hash,
            )
            .values(password_hash=new_hash)
        )

        def work(connection: Connection) -> int:
            changed = connection.execute(statement).rowcount
            if changed and now is not None:
                connection.execute(
                    end_sessions(
                        user_id, now=now, reason=EndReason.PASSWORD_CHANGED, keep=end_sessions_but
                    )
                )
            return changed

        return bool(await self._write(work))

    async def _write(self, work: Callable[[Connection], T]) -> T:
        try:
            return await self._database.write(work)
        except IntegrityError as exc:
            if self.keys.taken(exc):
                raise KeyTaken from exc
            # The only other unique key besides the random primary key is the live email.
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
        role=row.role,
    )
