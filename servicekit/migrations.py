"""Alembic, driven from code: each service keeps its own migration history.

`upgrade_to_head` backs `python -m <service> migrate`; `check_at_head` runs before a
service serves, so it never runs against a schema it was not written for; `run_env` is
what each service's `env.py` calls.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from alembic import command, context
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import MetaData, text
from sqlalchemy.engine import Connection, make_url
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from servicekit.database import is_sqlite
from servicekit.errors import StartupError


@dataclass(frozen=True, slots=True)
class MigrationHistory:
    """One service's Alembic history: its scripts, and the table recording how far a
    database has come - one table per service, so two services may share a database."""

    service: str
    location: Path

    @property
    def version_table(self) -> str:
        return f"alembic_version_{self.service.removesuffix('_service')}"

    @property
    def migrate_command(self) -> str:
        return f"python -m {self.service} migrate"


class SchemaNotCurrent(StartupError):
    """The database is not at the latest migration of the service."""


class DatabaseUnreachable(StartupError):
    """The database cannot be reached or opened."""


def describe_database_error(database_url: str, exc: BaseException) -> DatabaseUnreachable:
    where = make_url(database_url).render_as_string(hide_password=True)
    cause = exc.orig if isinstance(exc, DBAPIError) else exc
    return DatabaseUnreachable(f"cannot use the database {where}: {type(cause).__name__}: {cause}")


def alembic_config(history: MigrationHistory, database_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(history.location))
    config.attributes["history"] = history
    # Kept out of the ini-style options, where '%' in a password would be interpolated.
    config.attributes["database_url"] = database_url
    return config


def upgrade_to_head(history: MigrationHistory, database_url: str) -> str:
    """Apply every pending migration; return the revision the database is now at."""
    url = make_url(database_url)
    if is_sqlite(url) and url.database not in (None, "", ":memory:"):
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)
    config = alembic_config(history, database_url)
    try:
        command.upgrade(config, "head")
    except (DBAPIError, OSError) as exc:
        raise describe_database_error(database_url, exc) from exc
    return head_revision(history)


def head_revision(history: MigrationHistory) -> str:
    heads = ScriptDirectory.from_config(alembic_config(history, "")).get_heads()
    return ",".join(sorted(heads))


async def check_at_head(engine: AsyncEngine, history: MigrationHistory) -> None:
    expected = head_revision(history)
    migrate_hint = history.migrate_command
    url = engine.url
    # A one-off check at start-up, before anything else runs on the loop.
    if is_sqlite(url) and url.database and not Path(url.database).exists():  # noqa: ASYNC240
        raise SchemaNotCurrent(
            f"the database file {url.database} does not exist: run `{migrate_hint}` first"
        )

    # Alembic announces its dialect at INFO each time; only `migrate` should say so.
    logging.getLogger("alembic.runtime.migration").setLevel(logging.WARNING)

    def current(connection: Connection) -> str:
        opts = {"version_table": history.version_table}
        heads = MigrationContext.configure(connection, opts=opts).get_current_heads()
        return ",".join(sorted(heads))

    try:
        async with engine.connect() as connection:
            found = await connection.run_sync(current)
    except (DBAPIError, OSError) as exc:
        raise describe_database_error(engine.url.render_as_string(), exc) from exc
    if found != expected:
        raise SchemaNotCurrent(
            f"the database schema is at revision {found or 'none'}, this version needs "
            f"{expected}: run `{migrate_hint}` first"
        )


def run_env(target_metadata: MetaData) -> None:
    """The body of a service's alembic env.py (online mode, async driver)."""
    database_url: str = context.config.attributes["database_url"]
    history: MigrationHistory = context.config.attributes["history"]
    asyncio.run(_run_online(database_url, target_metadata, history))


async def _run_online(
    database_url: str, target_metadata: MetaData, history: MigrationHistory
) -> None:
    engine = create_async_engine(database_url, poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            sqlite = is_sqlite(database_url)
            if not sqlite:
                # Two `migrate` runs at once (replicas of a job) take turns.
                await connection.execute(
                    text("SELECT pg_advisory_lock(:key)"), {"key": _lock_key(history.version_table)}
                )
                await connection.commit()
            await connection.run_sync(_migrate, target_metadata, sqlite, history.version_table)
    finally:
        await engine.dispose()


def _migrate(
    connection: Connection, target_metadata: MetaData, sqlite: bool, version_table: str
) -> None:
    options: dict[str, Any] = {"render_as_batch": sqlite, "version_table": version_table}
    context.configure(connection=connection, target_metadata=target_metadata, **options)
    with context.begin_transaction():
        context.run_migrations()


def _lock_key(name: str) -> int:
    return zlib.crc32(name.encode())
