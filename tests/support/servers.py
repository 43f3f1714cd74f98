"""In-process services on real ports, for integration tests."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import grpc

from ai_service.metrics import Metrics
from ai_service.migrations import MIGRATIONS as AI_MIGRATIONS
from ai_service.server import ai_server
from ai_service.settings import AiSettings
from servicekit.database import Database, create_engine
from servicekit.migrations import upgrade_to_head
from tests.support.keys import signing_key_file
from tests.support.tokens import (
    GATEWAY_CLIENT_ID,
    GATEWAY_SCOPES,
    GATEWAY_SECRET,
    service_bearer,
)
from tests.support.users_standin import running_users_standin
from users_service.migrations import MIGRATIONS as USERS_MIGRATIONS
from users_service.server import users_server
from users_service.service_accounts import secret_hash
from users_service.service_accounts_repository import ServiceAccountsRepository
from users_service.settings import UsersSettings

# Cheap argon2 parameters: the tests check behaviour, not hashing cost.
FAST_ARGON2: dict[str, Any] = {"argon2_memory_kib": 8 * 1024, "argon2_time_cost": 1}
# Tests sign up many accounts at once from one address; the tests of those limits set
# their own (tests/integration/test_throttling.py).
ROOMY_LIMITS: dict[str, Any] = {"signups_per_address": 10_000, "password_hash_queue": 256}


async def migrate_users(database_url: str) -> None:
    """Migrate, and give the database the tests' gateway its service account."""
    # Alembic's env runs its own event loop; give it a thread of its own.
    await asyncio.to_thread(upgrade_to_head, USERS_MIGRATIONS, database_url)
    engine = create_engine(users_settings(database_url), application_name="tandem-tests")
    try:
        await ServiceAccountsRepository(Database(engine, what="users")).put(
            GATEWAY_CLIENT_ID,
            scopes=GATEWAY_SCOPES,
            secret_hash=secret_hash(GATEWAY_SECRET),
            now=datetime.now(UTC),
        )
    finally:
        await engine.dispose()


async def migrate_ai(database_url: str) -> None:
    await asyncio.to_thread(upgrade_to_head, AI_MIGRATIONS, database_url)


# The users target of ai_settings unless told: running_ai then starts a stand-in
# users service for it (tests.support.users_standin).
USERS_STANDIN = "users-standin"


def ai_settings(database_url: str, **overrides: Any) -> AiSettings:
    values: dict[str, Any] = {
        "addr": "127.0.0.1:0",
        "users_target": USERS_STANDIN,
        "database_url": database_url,
        "page_token_secret": "test-page-token-secret",
        "access_log": False,
        # Tests analyse fast; the quotas' own tests set them low.
        "analyses_per_minute": 1_000_000,
        **overrides,
    }
    return AiSettings(**values)


@asynccontextmanager
async def running_ai(settings: AiSettings, metrics: Metrics | None = None) -> AsyncIterator[str]:
    """A started ai server; yields its address. With the stand-in users target, a
    stand-in users service runs beside it."""
    async with AsyncExitStack() as stack:
        if settings.users_target == USERS_STANDIN:
            _, users_address = await stack.enter_async_context(running_users_standin())
            settings = settings.model_copy(update={"users_target": users_address})
        server = await stack.enter_async_context(ai_server(settings, metrics))
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
        **ROOMY_LIMITS,
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
async def channel_to(
    address: str, *, authorization: str | None = "service"
) -> AsyncIterator[grpc.aio.Channel]:
    """A channel whose calls carry `authorization` unless they name their own: by
    default a service account's token with every scope; None sends none."""
    if authorization == "service":
        authorization = service_bearer()
    interceptors: list[Any] = []
    if authorization is not None:
        # grpc files an interceptor under its first kind only: one of each.
        interceptors = [_UnaryAuthorization(authorization), _StreamAuthorization(authorization)]
    async with grpc.aio.insecure_channel(address, interceptors=interceptors) as channel:
        yield channel


if TYPE_CHECKING:
    _UnaryUnary = grpc.aio.UnaryUnaryClientInterceptor[Any, Any]
    _UnaryStream = grpc.aio.UnaryStreamClientInterceptor[Any, Any]
else:
    _UnaryUnary = grpc.aio.UnaryUnaryClientInterceptor
    _UnaryStream = grpc.aio.UnaryStreamClientInterceptor


class _DefaultAuthorization:
    def __init__(self, authorization: str) -> None:
        self._authorization = authorization

    def _details(self, details: Any) -> Any:
        metadata = list(details.metadata or ())
        if not any(key == "authorization" for key, _ in metadata):
            metadata.append(("authorization", self._authorization))
        return details._replace(metadata=grpc.aio.Metadata(*metadata))


class _UnaryAuthorization(_DefaultAuthorization, _UnaryUnary):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _StreamAuthorization(_DefaultAuthorization, _UnaryStream):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)
