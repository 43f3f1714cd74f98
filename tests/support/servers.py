"""In-process services on real ports, for integration tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import grpc

from ai_service.metrics import Metrics
from ai_service.migrations import MIGRATIONS as AI_MIGRATIONS
from ai_service.server import ai_server
from ai_service.settings import AiSettings
from servicekit.migrations import upgrade_to_head
from tests.support.keys import signing_key_file
from users_service.migrations import MIGRATIONS as USERS_MIGRATIONS
from users_service.server import users_server
from users_service.settings import UsersSettings

# Cheap argon2 parameters: the tests check behaviour, not hashing cost.
FAST_ARGON2: dict[str, Any] = {"argon2_memory_kib": 8 * 1024, "argon2_time_cost": 1}


async def migrate_users(database_url: str) -> None:
    # Alembic's env runs its own event loop; give it a thread of its own.
    await asyncio.to_thread(upgrade_to_head, USERS_MIGRATIONS, database_url)


async def migrate_ai(database_url: str) -> None:
    await asyncio.to_thread(upgrade_to_head, AI_MIGRATIONS, database_url)


def ai_settings(database_url: str, **overrides: Any) -> AiSettings:
    values: dict[str, Any] = {
        "addr": "127.0.0.1:0",
        "database_url": database_url,
        "page_token_secret": "test-page-token-secret",
        "access_log": False,
        **overrides,
    }
    return AiSettings(**values)


@asynccontextmanager
async def running_ai(settings: AiSettings, metrics: Metrics | None = None) -> AsyncIterator[str]:
    """A started ai server; yields its address."""
    async with ai_server(settings, metrics) as server:
        await server.start()
        try:
            yield server.address
        finally:
            await server.stop(0)


def users_settings(database_url: str, **overrides: Any) -> UsersSettings:
    values: dict[str, Any] = {
        "addr": "127.0.0.1:0",
        "database_url": database_url,
        "page_token_secret": "test-page-token-secret",
        "access_log": False,
        "token_signing_key_file": signing_key_file(),
        **FAST_ARGON2,
        **overrides,
    }
    return UsersSettings(**values)


@asynccontextmanager
async def running_users(settings: UsersSettings) -> AsyncIterator[str]:
    """A started users server; yields its address."""
    async with users_server(settings) as server:
        await server.start()
        try:
            yield server.address
        finally:
            await server.stop(0)


@asynccontextmanager
async def channel_to(address: str) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(address) as channel:
        yield channel
