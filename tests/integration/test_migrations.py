"""Each service's Alembic history builds exactly the schema its models declare, and
walks down to nothing and back up again, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import MetaData, inspect, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.pool import NullPool

from ai_service.migrations import MIGRATIONS as AI_MIGRATIONS
from ai_service.models import metadata as ai_metadata
from servicekit.database import is_sqlite
from servicekit.migrations import MigrationHistory, alembic_config, upgrade_to_head
from users_service.migrations import MIGRATIONS as USERS_MIGRATIONS
from users_service.models import metadata as users_metadata

NOW = datetime(2026, 12, 1, tzinfo=UTC)

HISTORIES = [
    pytest.param(USERS_MIGRATIONS, users_metadata, id="users"),
    pytest.param(AI_MIGRATIONS, ai_metadata, id="ai"),
]


@pytest.fixture
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(database_url, poolclass=NullPool)
    yield engine
    await engine.dispose()


async def _differences(
    engine: AsyncEngine, history: MigrationHistory, metadata: MetaData
) -> list[Any]:
    def compare(connection: Connection) -> list[Any]:
        context = MigrationContext.configure(
            connection, opts={"version_table": history.version_table, "compare_type": True}
        )
        return list(compare_metadata(context, metadata))

    async with engine.connect() as connection:
        return await connection.run_sync(compare)


@pytest.mark.parametrize(("history", "metadata"), HISTORIES)
async def test_the_migrations_build_the_schema_the_models_declare(
    database_url: str, engine: AsyncEngine, history: MigrationHistory, metadata: MetaData
) -> None:
    await asyncio.to_thread(upgrade_to_head, history, database_url)
    assert await _differences(engine, history, metadata) == []


@pytest.mark.parametrize(("history", "metadata"), HISTORIES)
async def test_the_migrations_go_down_to_nothing_and_up_again(
    database_url: str, engine: AsyncEngine, history: MigrationHistory, metadata: MetaData
) -> None:
    config = alembic_config(history, database_url)
    await asyncio.to_thread(upgrade_to_head, history, database_url)
    await asyncio.to_thread(command.downgrade, config, "base")
    async with engine.connect() as connection:
        left = await connection.run_sync(lambda c: set(inspect(c).get_table_names()))
    assert left == {history.version_table}
    await asyncio.to_thread(upgrade_to_head, history, database_url)
    assert await _differences(engine, history, metadata) == []


async def test_accounts_made_before_roles_become_users(
    database_url: str, engine: AsyncEngine
) -> None:
    config = alembic_config(USERS_MIGRATIONS, database_url)
    await asyncio.to_thread(command.upgrade, config, "0001")
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO users (id, email, email_key, name, password_hash, create_time,"
                " update_time, revision) VALUES (:id, 'a@example.com', 'a@example.com', 'A',"
                " 'x', :now, :now, 1)"
            ),
            {"id": uuid.uuid4() if not is_sqlite(database_url) else uuid.uuid4().hex, "now": NOW},
        )
    await asyncio.to_thread(upgrade_to_head, USERS_MIGRATIONS, database_url)
    async with engine.connect() as connection:
        roles = (await connection.execute(text("SELECT role FROM users"))).scalars().all()
    assert roles == ["user"]
    await asyncio.to_thread(command.downgrade, config, "0001")
    async with engine.connect() as connection:
        left = await connection.run_sync(lambda c: set(inspect(c).get_table_names()))
        columns = await connection.run_sync(
            lambda c: {col["name"] for col in inspect(c).get_columns("users")}
        )
    assert "sessions" not in left and "refresh_tokens" not in left
    assert "role" not in columns
