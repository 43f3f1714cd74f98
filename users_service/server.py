"""Builds and runs the users service: engine, schema check, servicer, gRPC server."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from functools import partial

from servicekit.database import Database, create_engine
from servicekit.migrations import check_at_head
from servicekit.pagination import page_tokens_from
from servicekit.server import GrpcServer, Service, build_server, serve_until_signalled
from tandem_protos.users.v1 import users_pb2, users_pb2_grpc
from users_service.accounts import Accounts
from users_service.migrations import MIGRATIONS
from users_service.passwords import PasswordHasher
from users_service.repository import UsersRepository
from users_service.servicer import UsersServicer
from users_service.settings import UsersSettings

SERVICE_NAME = users_pb2.DESCRIPTOR.services_by_name["UsersService"].full_name

log = logging.getLogger(__name__)


@asynccontextmanager
async def users_server(settings: UsersSettings) -> AsyncIterator[GrpcServer]:
    """A bound, not yet started, users server; its resources close on exit."""
    engine = create_engine(settings, application_name="tandem-users")
    hasher = PasswordHasher(
        memory_kib=settings.argon2_memory_kib,
        time_cost=settings.argon2_time_cost,
        parallelism=settings.argon2_parallelism,
        workers=settings.password_hash_workers,
    )
    try:
        await check_at_head(engine, MIGRATIONS)
        accounts = Accounts(
            UsersRepository(Database(engine, what="users")), hasher, page_tokens_from(settings)
        )
        servicer = UsersServicer(accounts)
        register = partial(users_pb2_grpc.add_UsersServiceServicer_to_server, servicer)
        yield build_server(
            settings.addr, [Service(SERVICE_NAME, register)], access_log=settings.access_log
        )
    finally:
        hasher.close()
        await engine.dispose()


async def serve(settings: UsersSettings) -> None:
    async with users_server(settings) as server:
        await serve_until_signalled(server, settings.shutdown_grace_seconds)
