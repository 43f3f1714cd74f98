from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tandem_protos.users.v1 import users_pb2_grpc
from tests.support.fake_anthropic import FakeAnthropic
from tests.support.servers import (
    channel_to,
    migrate_ai,
    migrate_users,
    running_users,
    users_settings,
)


@pytest.fixture
async def users_db(database_url: str) -> str:
    """A migrated users database, on SQLite and on PostgreSQL."""
    await migrate_users(database_url)
    return database_url


@pytest.fixture
async def users(users_db: str) -> AsyncIterator[users_pb2_grpc.UsersServiceAsyncStub]:
    """A stub talking to a real users server on a real port."""
    async with running_users(users_settings(users_db)) as address, channel_to(address) as channel:
        yield users_pb2_grpc.UsersServiceStub(channel)


@pytest.fixture
async def ai_db(database_url: str) -> str:
    """A migrated ai database, on SQLite and on PostgreSQL."""
    await migrate_ai(database_url)
    return database_url


@pytest.fixture
async def ai_sqlite_db(sqlite_url: str) -> str:
    """A migrated ai database on SQLite, for tests whose subject is not the database."""
    await migrate_ai(sqlite_url)
    return sqlite_url


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAnthropic]:
    """The fake Messages API, where the ai servers of the test send their SDK calls."""
    with FakeAnthropic() as fake:
        monkeypatch.setenv("ANTHROPIC_API_KEY", fake.api_key)
        monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.url)
        yield fake
