"""Fixtures every test may use: markers by folder, databases, tools."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.support import postgres

ROOT = Path(__file__).resolve().parent.parent
_KIND_BY_FOLDER = {"unit": "unit", "integration": "integration", "e2e": "e2e"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        folder = Path(str(item.fspath)).relative_to(ROOT / "tests").parts[0]
        kind = _KIND_BY_FOLDER.get(folder)
        if kind:
            item.add_marker(getattr(pytest.mark, kind))


@pytest.fixture(scope="session")
def postgres_server() -> None:
    """Skip (fail in CI) unless TEST_DATABASE_URL's PostgreSQL answers."""
    reason = asyncio.run(postgres.reachable())
    if reason is not None:
        where = postgres.admin_url().render_as_string(hide_password=True)
        message = (
            f"PostgreSQL is not reachable at {where} ({reason}); start it, or point "
            "TEST_DATABASE_URL at one (postgresql://user:password@host:port/database)"
        )
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"CI must run the PostgreSQL tests: {message}")
        pytest.skip(message)
    asyncio.run(postgres.drop_stale_databases())


@pytest.fixture
async def postgres_url(postgres_server: None) -> AsyncIterator[str]:
    """A new, empty PostgreSQL database, dropped after the test."""
    url = await postgres.create_database()
    try:
        yield url
    finally:
        await postgres.drop_database(url)


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'test.db'}"


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest) -> str:
    """Each test that takes it runs twice: on SQLite and on PostgreSQL."""
    name = "sqlite_url" if request.param == "sqlite" else "postgres_url"
    url: str = request.getfixturevalue(name)
    return url
