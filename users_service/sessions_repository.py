"""All SQL of sessions and refresh tokens (SQLAlchemy Core on `sessions`, `refresh_tokens`).

A refresh is one transaction: the presented token is marked rotated only if it was not
already (`UPDATE … WHERE rotate_time IS NULL`), so of two concurrent refreshes with one
token exactly one wins, on PostgreSQL (the loser waits for the row lock, then finds the
token rotated) and on SQLite (one writer at a time) alike.
"""

from __future__ import annotations

import enum
import uuid
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Row, Table, bindparam, insert, select, update
from sqlalchemy.engine import Connection
from sqlalchemy.sql.dml import Update

from servicekit.database import Database, utc
from users_service.models import RefreshTokenRow, SessionRow, UserRow

sessions = cast(Table, SessionRow.__table__)
refresh_tokens = cast(Table, RefreshTokenRow.__table__)
users = cast(Table, UserRow.__table__)

_SESSION_COLUMNS = (
    sessions.c.id,
    sessions.c.user_id,
    sessions.c.create_time,
    sessions.c.expire_time,
    sessions.c.end_time,
)
_GET_MANY = select(*_SESSION_COLUMNS).where(sessions.c.id.in_(bindparam("ids", expanding=True)))


class EndReason(enum.StrEnum):
    LOGOUT = "logout"
    PASSWORD_CHANGED = "password_changed"  # noqa: S105
    ACCOUNT_DELETED = "account_deleted"
    ROLE_REVOKED = "role_revoked"
    REFRESH_TOKEN_REUSED = "refresh_token_reused"  # noqa: S105


@dataclass(frozen=True, slots=True)
class Session:
    id: uuid.UUID
    user_id: uuid.UUID
    create_time: datetime
    expire_time: datetime
    end_time: datetime | None


@dataclass(frozen=True, slots=True)
class Grant:
    """What a new pair of tokens is issued for."""

    user_id: uuid.UUID
    role: str
    session_id: uuid.UUID
    session_expire_time: datetime
    refresh_expire_time: datetime


class Refused(enum.Enum):
    """Why a refresh token was not traded for a new pair."""

    # Unknown, expired, or its session or account ended.
    INVALID = "invalid"
    # Rotated within the grace period: the session goes on.
    ROTATED_RECENTLY = "rotated recently"
    # Rotated earlier than that: the session has just been ended.
    REUSED = "reused"


def end_sessions(
    user_id: uuid.UUID, *, now: datetime, reason: EndReason, keep: uuid.UUID | None = None
) -> Update:
    """The statement that ends every live session of an account, but `keep`."""
    statement = (
        update(sessions)
        .where(sessions.c.user_id == user_id, sessions.c.end_time.is_(None))
        .values(end_time=now, end_reason=reason.value)
    )
    if keep is not None:
        statement = statement.where(sessions.c.id != keep)
    return statement


class SessionsRepository:
    def __init__(self, database: Database) -> None:
        self._database = database

    async def start(self, grant: Grant, *, refresh_hash: str, now: datetime) -> None:
        """Store a new session and its first refresh token."""

        def work(connection: Connection) -> None:
            connection.execute(
                insert(sessions).values(
                    id=grant.session_id,
                    user_id=grant.user_id,
                    create_time=now,
                    expire_time=grant.session_expire_time,
                    end_time=None,
                    end_reason=None,
                )
            )
            _insert_refresh(connection, grant, refresh_hash, now)

        await self._database.write(work)

    async def rotate(
        self,
        old_hash: str,
        new_hash: str,
        *,
        now: datetime,
        refresh_ttl: timedelta,
        reuse_grace: timedelta,
    ) -> Grant | Refused:
        """Trade a refresh token for `new_hash`; or why not (ending the session on reuse)."""

        def work(connection: Connection) -> Grant | Refused:
            session_id = connection.execute(
                update(refresh_tokens)
                .where(
                    refresh_tokens.c.token_hash == old_hash,
                    refresh_tokens.c.rotate_time.is_(None),
                    refresh_tokens.c.expire_time > now,
                )
                .values(rotate_time=now)
                .returning(refresh_tokens.c.session_id)
            ).scalar()
            if session_id is None:
                return _refused(connection, old_hash, now=now, reuse_grace=reuse_grace)
            live = _live_session(connection, session_id, now)
            if live is None:
                return Refused.INVALID
            user_id, role, session_expire = live
            grant = Grant(
                user_id=user_id,
                role=role,
                session_id=session_id,
                session_expire_time=session_expire,
                refresh_expire_time=min(now + refresh_ttl, session_expire),
            )
            _insert_refresh(connection, grant, new_hash, now)
            return grant

        return await self._database.write(work)

    async def session_of_refresh_token(self, token_hash: str) -> uuid.UUID | None:
        statement = select(refresh_tokens.c.session_id).where(
            refresh_tokens.c.token_hash == token_hash
        )
        found = await self._database.read(lambda c: c.execute(statement).scalar())
        return cast(uuid.UUID | None, found)

    async def end(
        self, session_id: uuid.UUID, *, now: datetime, reason: EndReason
    ) -> uuid.UUID | None:
        """End a session (if it still runs); the user id of the session, None if unknown."""
        owner = select(sessions.c.user_id).where(sessions.c.id == session_id)

        def work(connection: Connection) -> Any:
            connection.execute(_end_session(session_id, now=now, reason=reason))
            return connection.execute(owner).scalar()

        return cast(uuid.UUID | None, await self._database.write(work))

    async def get_many(self, session_ids: Collection[uuid.UUID]) -> list[Session]:
        """The sessions among `session_ids`, ended ones included, in no particular order."""
        rows = await self._database.read(
            lambda c: c.execute(_GET_MANY, {"ids": list(session_ids)}).all()
        )
        return [_session(row) for row in rows]


def _insert_refresh(connection: Connection, grant: Grant, token_hash: str, now: datetime) -> None:
    connection.execute(
        insert(refresh_tokens).values(
            token_hash=token_hash,
            session_id=grant.session_id,
            create_time=now,
            expire_time=grant.refresh_expire_time,
            rotate_time=None,
        )
    )


def _live_session(
    connection: Connection, session_id: uuid.UUID, now: datetime
) -> tuple[uuid.UUID, str, datetime] | None:
    row = connection.execute(
        select(sessions.c.user_id, users.c.role, sessions.c.expire_time)
        .join(users, users.c.id == sessions.c.user_id)
        .where(
            sessions.c.id == session_id,
            sessions.c.end_time.is_(None),
            sessions.c.expire_time > now,
            users.c.delete_time.is_(None),
        )
    ).first()
    if row is None:
        return None
    return row.user_id, row.role, utc(row.expire_time)


def _refused(
    connection: Connection, token_hash: str, *, now: datetime, reuse_grace: timedelta
) -> Refused:
    row = connection.execute(
        select(refresh_tokens.c.session_id, refresh_tokens.c.rotate_time).where(
            refresh_tokens.c.token_hash == token_hash
        )
    ).first()
    if row is None or row.rotate_time is None:
        return Refused.INVALID
    if now - utc(row.rotate_time) <= reuse_grace:
        return Refused.ROTATED_RECENTLY
    connection.execute(_end_session(row.session_id, now=now, reason=EndReason.REFRESH_TOKEN_REUSED))
    return Refused.REUSED


def _end_session(session_id: uuid.UUID, *, now: datetime, reason: EndReason) -> Update:
    return (
        update(sessions)
        .where(sessions.c.id == session_id, sessions.c.end_time.is_(None))
        .values(end_time=now, end_reason=reason.value)
    )


def _session(row: Row[*tuple[Any, ...]]) -> Session:
    return Session(
        id=row.id,
        user_id=row.user_id,
        create_time=utc(row.create_time),
        expire_time=utc(row.expire_time),
        end_time=utc(row.end_time) if row.end_time is not None else None,
    )
