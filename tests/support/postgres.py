"""Throw-away PostgreSQL databases for tests, on the server of TEST_DATABASE_URL."""

from __future__ import annotations

import os
import re
import uuid

import asyncpg
from sqlalchemy.engine import URL, make_url

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
PREFIX = "tandem_test_"
_NAME = re.compile(rf"^{PREFIX}(\d+)_[0-9a-f]+$")


def admin_url() -> URL:
    url = make_url(os.environ.get("TEST_DATABASE_URL", DEFAULT_ADMIN_URL))
    return url.set(drivername="postgresql")


def _dsn(url: URL) -> str:
    return url.render_as_string(hide_password=False)


async def reachable() -> str | None:
    """None when the server answers, else why not."""
    try:
        connection = await asyncpg.connect(_dsn(admin_url()), timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        return f"{type(exc).__name__}: {exc}"
    await connection.close()
    return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


async def drop_stale_databases() -> list[str]:
    """Drop the databases of test runs whose process is gone (killed runs)."""
    connection = await asyncpg.connect(_dsn(admin_url()), timeout=5)
    dropped = []
    try:
        names = await connection.fetch(
            "SELECT datname FROM pg_database WHERE datname LIKE $1", PREFIX + "%"
        )
        for record in names:
            name = record["datname"]
            match = _NAME.match(name)
            if match and not _alive(int(match.group(1))):
                await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                dropped.append(name)
    finally:
        await connection.close()
    return dropped


async def create_database() -> str:
    """Create an empty database; return its SQLAlchemy (asyncpg) URL."""
    name = f"{PREFIX}{os.getpid()}_{uuid.uuid4().hex[:12]}"
    connection = await asyncpg.connect(_dsn(admin_url()), timeout=5)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return (
        admin_url()
        .set(drivername="postgresql+asyncpg", database=name)
        .render_as_string(hide_password=False)
    )


async def drop_database(url: str) -> None:
    name = make_url(url).database
    assert name is not None and name.startswith(PREFIX)
    connection = await asyncpg.connect(_dsn(admin_url()), timeout=5)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()
