"""The users service's tables (SQLAlchemy 2), shared by the repository and Alembic."""

from __future__ import annotations

import uuid
from datetime import datetime

from sqlalchemy import DateTime, Index, Integer, MetaData, String, Uuid, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from servicekit.idempotency_records import idempotency_keys_table

metadata = MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "pk": "pk_%(table_name)s",
    }
)


class Base(DeclarativeBase):
    metadata = metadata


# The request ids (idempotency keys) of sign-ups, beside what each made
# (servicekit.idempotency).
sign_up_keys = idempotency_keys_table(metadata, "sign_up_keys")


class UserRow(Base):
    __tablename__ = "users"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    email: Mapped[str] = mapped_column(String(254))
    # The email as compared: case-folded in Python, so that PostgreSQL and SQLite
    # (whose lower() knows only ASCII) agree on what counts as the same address.
    email_key: Mapped[str] = mapped_column(String(254))
    name: Mapped[str] = mapped_column(String(100))
    password_hash: Mapped[str] = mapped_column(String(255))
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    update_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    delete_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # Bumped on every change; the etag is derived from it.
    revision: Mapped[int] = mapped_column(Integer, default=1)
    # `user` or `admin` (users_service.policy.Role); only the CLI makes admins.
    role: Mapped[str] = mapped_column(String(16), server_default=text("'user'"))

    __table_args__ = (
        # Uniqueness among live accounts is the database's job, not a
        # check-then-insert race.
        Index(
            "uq_users_email_key_live",
            "email_key",
            unique=True,
            postgresql_where=delete_time.is_(None),
            sqlite_where=delete_time.is_(None),
        ),
        # Keyset pagination walks (create_time, id).
        Index("ix_users_create_time_id", "create_time", "id"),
    )


class SessionRow(Base):
    """A login: what an account's access and refresh tokens belong to."""

    __tablename__ = "sessions"

    id: Mapped[uuid.UUID] = mapped_column(Uuid, primary_key=True)
    user_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # The absolute end: no refresh carries a session past it.
    expire_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # Set when it was ended early (logout, password change, deletion, reuse).
    end_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    end_reason: Mapped[str | None] = mapped_column(String(32))

    __table_args__ = (
        # Ending every session of an account (password change, deletion).
        Index("ix_sessions_user_id", "user_id"),
    )


class RefreshTokenRow(Base):
    """One refresh token of a session, by its hash; the token itself is never stored."""

    __tablename__ = "refresh_tokens"

    # SHA-256 of the token, hex: the token is 256 random bits, so no salt or slow hash
    # is needed to make the stored value useless to whoever reads the table.
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    session_id: Mapped[uuid.UUID] = mapped_column(Uuid)
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expire_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # When it was traded for the next one; presenting it again after that is reuse.
    rotate_time: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))

    __table_args__ = (Index("ix_refresh_tokens_session_id", "session_id"),)


class ServiceAccountRow(Base):
    """A service that calls Tandem's services: its name, scopes and secret's hash."""

    __tablename__ = "service_accounts"

    # The OAuth2 client_id.
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    # Space-separated, as the tokens' `scope` claim carries them.
    scopes: Mapped[str] = mapped_column(String(512))
    # SHA-256 of the secret, hex: like refresh tokens, the secret is 256 random bits.
    secret_hash: Mapped[str] = mapped_column(String(64))
    create_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    update_time: Mapped[datetime] = mapped_column(DateTime(timezone=True))
