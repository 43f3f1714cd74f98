"""Builds and runs the users service: engine, schema check, servicers, gRPC server."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from datetime import timedelta
from functools import partial
from typing import Any

from servicekit.callers import CallerResolver
from servicekit.database import Database, create_engine
from servicekit.idempotency import IdempotentWrites
from servicekit.liveness import Liveness
from servicekit.metrics import gauge_of
from servicekit.metrics import serve as serve_metrics
from servicekit.migrations import check_at_head
from servicekit.pagination import page_tokens_from
from servicekit.server import GrpcServer, Service, build_server, serve_until_signalled
from servicekit.throttle import Throttle
from servicekit.tokens import KeySet, TokenVerifier
from tandem_protos.users.v1 import auth_pb2, auth_pb2_grpc, users_pb2, users_pb2_grpc
from users_service.accounts import Accounts
from users_service.auth_servicer import AuthServicer
from users_service.migrations import MIGRATIONS
from users_service.passwords import PASSWORD_HASH_PENDING, PasswordHasher
from users_service.repository import UsersRepository
from users_service.service_accounts import ServiceAccounts
from users_service.service_accounts_repository import ServiceAccountsRepository
from users_service.servicer import UsersServicer
from users_service.sessions import Sessions
from users_service.sessions_repository import SessionsRepository
from users_service.settings import UsersSettings
from users_service.signing_keys import SigningKeys, load_signing_keys
from users_service.throttling import Throttling
from users_service.tokens import AccessTokens

SERVICE_NAME = users_pb2.DESCRIPTOR.services_by_name["UsersService"].full_name
AUTH_SERVICE_NAME = auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name

log = logging.getLogger(__name__)


def signing_keys_from(settings: UsersSettings) -> SigningKeys:
    return load_signing_keys(
        settings.token_signing_key_file, settings.verify_key_paths, settings.token_dev_key_file
    )


def local_verifier(settings: UsersSettings, keys: SigningKeys) -> TokenVerifier:
    """Verifies this service's own tokens against its configured keys (no fetch)."""
    jwks = keys.jwks()

    async def source() -> Mapping[str, Any]:
        return jwks

    return TokenVerifier(
        KeySet(source, max_age_seconds=float("inf")),
        issuer=settings.token_issuer,
        audience=settings.token_audience,
        max_lifetime_seconds=settings.token_max_lifetime_seconds,
    )


@asynccontextmanager
async def users_server(settings: UsersSettings) -> AsyncIterator[GrpcServer]:
    """A bound, not yet started, users server; its resources close on exit."""
    keys = signing_keys_from(settings)
    # First: what is made below records only while metrics are served.
    metrics_server = serve_metrics(settings.metrics_addr) if settings.metrics_addr else None
    engine = create_engine(settings, application_name="tandem-users")
    hasher = PasswordHasher(
        memory_kib=settings.argon2_memory_kib,
        time_cost=settings.argon2_time_cost,
        parallelism=settings.argon2_parallelism,
        workers=settings.password_hash_workers,
        max_waiting=settings.password_hash_queue,
    )
    if metrics_server is not None:
        gauge_of(PASSWORD_HASH_PENDING, lambda: hasher.pending)
    throttle = Throttle.from_settings(settings)
    try:
        throttling = Throttling(throttle, settings.login_rules())
        await check_at_head(engine, MIGRATIONS)
        database = Database(engine, what="users")
        # Told of the sessions this process ends; asks the table about the rest.
        live = Liveness(
            # `sessions` is made below, with this cache in hand.
            lambda session_id, _credential: sessions.live_owner(session_id),
            ttl=settings.session_cache_seconds,
        )
        repository = UsersRepository(database)
        sign_ups = IdempotentWrites(
            repository.keys, ttl=timedelta(seconds=settings.idempotency_key_ttl_seconds)
        )
        accounts = Accounts(
            repository,
            hasher,
            page_tokens_from(settings),
            sessions=live,
            sign_ups=sign_ups,
            throttling=throttling,
        )
        verifier = local_verifier(settings, keys)
        callers = CallerResolver(verifier, live)
        access_tokens = AccessTokens(
            keys,
            issuer=settings.token_issuer,
            audience=settings.token_audience,
            ttl_seconds=settings.access_token_ttl_seconds,
        )
        sessions = Sessions(
            accounts,
            SessionsRepository(database),
            access_tokens,
            verifier,
            refresh_ttl=timedelta(seconds=settings.refresh_token_ttl_seconds),
            session_max=timedelta(seconds=settings.session_max_seconds),
            reuse_grace=timedelta(seconds=settings.refresh_reuse_grace_seconds),
            live=live,
        )
        service_accounts = ServiceAccounts(
            ServiceAccountsRepository(database), access_tokens, throttling=throttling
        )
        services = [
            Service(
                SERVICE_NAME,
                partial(
                    users_pb2_grpc.add_UsersServiceServicer_to_server,
                    UsersServicer(accounts, callers),
                ),
            ),
            Service(
                AUTH_SERVICE_NAME,
                partial(
                    auth_pb2_grpc.add_AuthServiceServicer_to_server,
                    AuthServicer(sessions, service_accounts, callers, keys.jwks),
                ),
            ),
        ]
        log.info("access tokens are signed with key %s", keys.signing_kid)
        log.info("login and sign-up limits are counted in %s", throttle.where)
        yield build_server(
            settings.addr,
            services,
            tls=settings.server_tls(),
            reflection=callers.caller if settings.reflection else None,
            access_log=settings.access_log,
            max_concurrent_rpcs=settings.max_concurrent_rpcs,
        )
    finally:
        if metrics_server is not None:
            await metrics_server.aclose()
        hasher.close()
        await throttle.close()
        await engine.dispose()


async def serve(settings: UsersSettings) -> None:
    async with users_server(settings) as server:
        await serve_until_signalled(server, settings.shutdown_grace_seconds)
