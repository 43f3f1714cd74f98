"""Reading a service's tables straight from its database, to check what a test stored."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table, func, select
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool


async def rows_of(database_url: str, table: Table) -> list[dict[str, Any]]:
    """Every row of `table`, as dicts."""
    engine = create_async_engine(database_url, poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            result = await connection.execute(select(table))
            return [dict(row._mapping) for row in result]
    finally:
        await engine.dispose()


async def count_of(database_url: str, table: Table) -> int:
    engine = create_async_engine(database_url, poolclass=NullPool)
    try:
        async with engine.connect() as connection:
            found = await connection.execute(select(func.count()).select_from(table))
            return int(found.scalar_one())
    finally:
        await engine.dispose()
