"""Throw-away PostgreSQL databases for tests, on the server of TEST_DATABASE_URL."""

from __future__ import annotations

import os
import re
import uuid

import asyncpg
from sqlalchemy.engine import URL, make_url

DEFAULT_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
PREFIX = "tandem_test_"


def admin_url(raw: str | None = None) -> URL:
    """The server to make databases on: `raw`, else TEST_DATABASE_URL, else local."""
    url = make_url(raw or os.environ.get("TEST_DATABASE_URL", DEFAULT_ADMIN_URL))
    return url.set(drivername="postgresql")


def dsn(url: URL) -> str:
    return url.render_as_string(hide_password=False)


async def reachable() -> str | None:
    """None when the server answers, else why not."""
    try:
        connection = await asyncpg.connect(dsn(admin_url()), timeout=3)
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        return f"{type(exc).__name__}: {exc}"
    await connection.close()
    return None


class ThrowawayDatabases:
    """Databases named `<prefix><pid>_<hex>` on the server of `admin`.

    Each run makes its own and drops them; a run that was killed leaves its databases
    behind, and the next run drops those whose process is gone (`drop_stale`).
    """

    def __init__(self, prefix: str, admin: URL) -> None:
        self.prefix = prefix
        self.admin = admin
        self._name = re.compile(rf"^{re.escape(prefix)}(\d+)_[0-9a-f]+$")

    async def create(self) -> URL:
        """A new empty database; its plain (libpq-style) URL."""
        name = f"{self.prefix}{os.getpid()}_{uuid.uuid4().hex[:12]}"
        await self._execute(f'CREATE DATABASE "{name}"')
        return self.admin.set(database=name)

    async def drop(self, name: str | None) -> None:
        assert name is not None and name.startswith(self.prefix), name
        # FORCE: a service or a load generator may still hold connections.
        await self._execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    async def drop_stale(self) -> list[str]:
        """Drop the databases of runs whose process is gone; their names."""
        connection = await asyncpg.connect(dsn(self.admin), timeout=5)
        dropped = []
        try:
            names = await connection.fetch(
                "SELECT datname FROM pg_database WHERE datname LIKE $1", self.prefix + "%"
            )
            for record in names:
                name = record["datname"]
                match = self._name.match(name)
                if match and not _alive(int(match.group(1))):
                    await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                    dropped.append(name)
        finally:
            await connection.close()
        return dropped

    async def _execute(self, statement: str) -> None:
        connection = await asyncpg.connect(dsn(self.admin), timeout=10)
        try:
            await connection.execute(statement)
        finally:
            await connection.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _tests() -> ThrowawayDatabases:
    return ThrowawayDatabases(PREFIX, admin_url())


async def drop_stale_databases() -> list[str]:
    """Drop the databases of test runs whose process is gone (killed runs)."""
    return await _tests().drop_stale()


async def create_database() -> str:
    """Create an empty database; return its SQLAlchemy (asyncpg) URL."""
    url = await _tests().create()
    return dsn(url.set(drivername="postgresql+asyncpg"))


async def drop_database(url: str) -> None:
    await _tests().drop(make_url(url).database)
