"""Builds and runs the ai service: engine, schema check, backends, servicer, gRPC server."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from datetime import timedelta
from functools import partial

import anthropic
from google.longrunning import operations_pb2_grpc

from ai_service.accounts import Accounts
from ai_service.analyses import Analyses, Limits
from ai_service.backends.anthropic import AnthropicBackend
from ai_service.backends.base import Backend
from ai_service.backends.offline import OfflineBackend
from ai_service.batches import BatchRunner, BatchWorker, OfflineBatches
from ai_service.claude_batches import ClaudeBatches
from ai_service.metrics import Metrics
from ai_service.migrations import MIGRATIONS
from ai_service.operations import Operations
from ai_service.operations_repository import OperationsRepository
from ai_service.operations_servicer import SERVICE_NAME as OPERATIONS_SERVICE_NAME
from ai_service.operations_servicer import OperationsServicer
from ai_service.quotas import AnalysisQuotas
from ai_service.repository import AnalysesRepository
from ai_service.servicer import AnalysisServicer
from ai_service.settings import AiSettings
from ai_service.slots import ProviderSlots
from servicekit.callers import CallerResolver, jwks_source, remote_verifier
from servicekit.database import Database, create_engine
from servicekit.errors import StartupError
from servicekit.idempotency import IdempotentWrites
from servicekit.migrations import check_at_head
from servicekit.pagination import PageTokens, page_tokens_from
from servicekit.server import GrpcServer, Service, build_server, serve_until_signalled
from servicekit.throttle import Throttle
from servicekit.tls import check_client_files
from tandem_client import AUTH_SERVICE, USERS_SERVICE, Connection
from tandem_protos.ai.v1 import analysis_pb2, analysis_pb2_grpc

SERVICE_NAME = analysis_pb2.DESCRIPTOR.services_by_name["AnalysisService"].full_name

log = logging.getLogger(__name__)


@asynccontextmanager
async def ai_server(
    settings: AiSettings, metrics: Metrics | None = None
) -> AsyncIterator[GrpcServer]:
    """A bound, not yet started, ai server; its resources close on exit."""
    metrics = metrics or Metrics()
    async with AsyncExitStack() as stack:
        engine = create_engine(settings, application_name="tandem-ai")
        stack.push_async_callback(engine.dispose)
        await check_at_head(engine, MIGRATIONS)
        check_client_files(settings.client_tls())
        users = Connection(
            settings.users_target,
            tls=settings.client_tls(),
            deadline=settings.users_deadline_seconds,
            services=(USERS_SERVICE, AUTH_SERVICE),
        )
        stack.push_async_callback(users.close)
        accounts = Accounts(users, ttl=settings.auth_cache_seconds)
        callers = CallerResolver(remote_verifier(jwks_source(users), settings), accounts.sessions)
        backend, fallback = await _backends(settings, stack)
        log.info(
            "analyses by %s%s",
            backend.model,
            f", falling back to {fallback.model}" if fallback else "",
        )
        # One Database for both repositories: on SQLite its writers take turns.
        database = Database(engine, what="ai")
        repository = AnalysesRepository(database)
        page_tokens = page_tokens_from(settings)
        throttle = Throttle.from_settings(settings)
        stack.push_async_callback(throttle.close)
        log.info("analysis quotas are counted in %s", throttle.where)
        quotas = AnalysisQuotas(
            throttle,
            per_minute=settings.analyses_per_minute,
            tokens_per_day=settings.provider_tokens_per_day,
        )
        analyses = Analyses(
            repository,
            backend,
            accounts=accounts,
            fallback=fallback,
            limits=Limits(settings.max_text_chars, settings.cache_ttl_seconds),
            page_tokens=page_tokens,
            quotas=quotas,
            slots=ProviderSlots(
                settings.max_concurrency,
                min(settings.max_concurrency_per_user, settings.max_concurrency),
            ),
            metrics=metrics,
            requests=IdempotentWrites(
                repository.keys, ttl=timedelta(seconds=settings.idempotency_key_ttl_seconds)
            ),
        )
        operations_servicer = OperationsServicer(
            await _operations(
                settings,
                database=database,
                analyses=repository,
                backend=backend,
                accounts=accounts,
                quotas=quotas,
                metrics=metrics,
                page_tokens=page_tokens,
                stack=stack,
            ),
            callers,
        )
        if settings.metrics_addr:
            metrics.serve(settings.metrics_addr)
        servicer = AnalysisServicer(
            analyses,
            callers,
            default_deadline_seconds=settings.default_deadline_seconds,
            batch_analyze=operations_servicer.batch_analyze,
        )
        register = partial(analysis_pb2_grpc.add_AnalysisServiceServicer_to_server, servicer)
        register_operations = partial(
            operations_pb2_grpc.add_OperationsServicer_to_server, operations_servicer
        )
        yield build_server(
            settings.addr,
            [
                Service(SERVICE_NAME, register),
                Service(OPERATIONS_SERVICE_NAME, register_operations),
            ],
            tls=settings.server_tls(),
            reflection=callers.caller if settings.reflection else None,
            access_log=settings.access_log,
            max_concurrent_rpcs=settings.max_concurrent_rpcs,
        )


async def serve(settings: AiSettings) -> None:
    async with ai_server(settings) as server:
        await serve_until_signalled(server, settings.shutdown_grace_seconds)


async def _operations(
    settings: AiSettings,
    *,
    database: Database,
    analyses: AnalysesRepository,
    backend: Backend,
    accounts: Accounts,
    quotas: AnalysisQuotas,
    metrics: Metrics,
    page_tokens: PageTokens,
    stack: AsyncExitStack,
) -> Operations:
    """BatchAnalyzeTexts' operations, and this replica's runner of them (started)."""
    repository = OperationsRepository(database)
    worker: BatchWorker
    if settings.resolved_provider() == "anthropic":
        # Batch requests are built and parsed by the Claude backend itself.
        assert isinstance(backend, AnthropicBackend), "Claude batches need AnthropicBackend"
        worker = ClaudeBatches(
            backend,
            poll_seconds=settings.batch_poll_seconds,
            poll_max_seconds=settings.batch_poll_max_seconds,
        )
    else:
        worker = OfflineBatches(backend)
    runner = BatchRunner(
        repository,
        worker,
        lease_seconds=settings.batch_lease_seconds,
        scan_seconds=settings.batch_scan_seconds,
        quotas=quotas,
        metrics=metrics,
    )
    await runner.start()
    stack.push_async_callback(runner.stop)
    return Operations(
        repository,
        analyses,
        runner,
        accounts=accounts,
        quotas=quotas,
        max_texts=settings.batch_max_texts,
        max_text_chars=settings.max_text_chars,
        page_tokens=page_tokens,
        requests=IdempotentWrites(
            repository.keys, ttl=timedelta(seconds=settings.idempotency_key_ttl_seconds)
        ),
    )


async def _backends(settings: AiSettings, stack: AsyncExitStack) -> tuple[Backend, Backend | None]:
    if settings.resolved_provider() == "offline":
        return OfflineBackend(), None
    if not os.environ.get("ANTHROPIC_API_KEY"):
        raise StartupError("AI_PROVIDER=anthropic needs ANTHROPIC_API_KEY to be set")
    # One client (one connection pool) for the process; key and base URL come from
    # ANTHROPIC_API_KEY and ANTHROPIC_BASE_URL. The SDK's aiohttp transport, which it
    # recommends for concurrency: with hundreds of calls in flight the default httpx pool
    # spends CPU on every request re-scanning its connections (bench/ai_bench.py).
    client = anthropic.AsyncAnthropic(
        timeout=settings.anthropic_timeout_seconds,
        max_retries=settings.anthropic_max_retries,
        http_client=anthropic.DefaultAioHttpClient(),
    )
    stack.push_async_callback(client.close)
    # httpx2 logs each request at INFO; the servicer's own line names its request ids.
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    backend = AnthropicBackend(
        client,
        model=settings.model,
        max_output_tokens=settings.max_output_tokens,
        timeout_seconds=settings.anthropic_timeout_seconds,
    )
    return backend, OfflineBackend() if settings.fallback == "offline" else None
