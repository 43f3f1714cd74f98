"""Builds and runs the ai service: engine, schema check, backends, servicer, gRPC server."""

from __future__ import annotations

import json
import logging
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
from ai_service.budget import InputBudget
from ai_service.chain import ModelChain
from ai_service.claude_batches import ClaudeBatches
from ai_service.metrics import Metrics
from ai_service.migrations import MIGRATIONS
from ai_service.operations import Operations
from ai_service.operations_repository import OperationsRepository
from ai_service.operations_servicer import SERVICE_NAME as OPERATIONS_SERVICE_NAME
from ai_service.operations_servicer import OperationsServicer
from ai_service.pricing import Prices
from ai_service.prompt import OUTPUT_SCHEMA, SYSTEM_PROMPT
from ai_service.quotas import AnalysisQuotas
from ai_service.repository import AnalysesRepository
from ai_service.servicer import AnalysisServicer
from ai_service.settings import AiSettings
from ai_service.slots import ProviderSlots
from servicekit.callers import CallerResolver, jwks_source, remote_verifier
from servicekit.database import Database, create_engine
from servicekit.errors import StartupError
from servicekit.idempotency import IdempotentWrites
from servicekit.metrics import serve as serve_metrics
from servicekit.migrations import check_at_head
from servicekit.observers import UpstreamObserver
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
    metrics = metrics or Metrics(Prices.from_settings(settings))
    async with AsyncExitStack() as stack:
        if settings.metrics_addr:
            # First: what is made below records only while metrics are served.
            stack.push_async_callback(serve_metrics(settings.metrics_addr, metrics.registry).aclose)
        engine = create_engine(settings, application_name="tandem-ai")
        stack.push_async_callback(engine.dispose)
        await check_at_head(engine, MIGRATIONS)
        check_client_files(settings.client_tls())
        users = Connection(
            settings.users_target,
            tls=settings.client_tls(),
            deadline=settings.users_deadline_seconds,
            services=(USERS_SERVICE, AUTH_SERVICE),
            observer=UpstreamObserver("users", settings.users_target),
        )
        stack.push_async_callback(users.close)
        accounts = Accounts(users, ttl=settings.auth_cache_seconds)
        verifier = remote_verifier(jwks_source(users), settings)
        callers = CallerResolver(verifier, accounts.sessions)
        chain, budget = _chain(settings, stack, metrics)
        log.info("analyses by %s", " then ".join(chain.models))
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
            chain,
            accounts=accounts,
            budget=budget,
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
                backend=chain.primary_backend,
                accounts=accounts,
                quotas=quotas,
                budget=budget,
                metrics=metrics,
                page_tokens=page_tokens,
                stack=stack,
            ),
            callers,
            default_deadline_seconds=settings.default_deadline_seconds,
        )
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
        server = build_server(
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
        # Every call needs the users service's keys: fetch them before the first asks,
        # without holding the start up (the users service may come up later).
        server.while_serving(verifier.keys.warm)
        yield server


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
    budget: InputBudget | None,
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
        budget=budget,
        max_texts=settings.batch_max_texts,
        max_text_chars=settings.max_text_chars,
        page_tokens=page_tokens,
        requests=IdempotentWrites(
            repository.keys, ttl=timedelta(seconds=settings.idempotency_key_ttl_seconds)
        ),
    )


def _chain(
    settings: AiSettings, stack: AsyncExitStack, metrics: Metrics
) -> tuple[ModelChain, InputBudget | None]:
    """The models to ask, in order, and the input budget of a text (Claude only: the
    offline analyzer counts no tokens, AI_MAX_TEXT_CHARS bounds its work)."""
    if settings.resolved_provider() == "offline":
        return ModelChain([OfflineBackend()], fallback=None, metrics=metrics), None
    key = settings.anthropic_api_key
    if key is None:
        raise StartupError("AI_PROVIDER=anthropic needs ANTHROPIC_API_KEY to be set")
    # One client (one connection pool) for the process and every model. The SDK's
    # aiohttp transport, which it recommends for concurrency: with hundreds of calls in
    # flight the default httpx pool spends CPU on every request re-scanning its
    # connections (bench/ai_bench.py).
    client = anthropic.AsyncAnthropic(
        api_key=key.get_secret_value(),
        base_url=settings.anthropic_base_url,
        timeout=settings.anthropic_timeout_seconds,
        max_retries=settings.anthropic_max_retries,
        http_client=anthropic.DefaultAioHttpClient(),
        # The SDK's span of each call (model, token counts) joins the analysis' trace
        # while tracing is on (servicekit.telemetry). Given here, the option is whole:
        # no ANTHROPIC_OPEN_TELEMETRY_* variable can put a text into a span, and no
        # trace context is sent to the provider.
        open_telemetry={"traces": {"content_mode": "metadata_only"}, "propagation": False},
    )
    stack.push_async_callback(client.close)
    # httpx2 logs each request at INFO; the servicer's own line names its request ids.
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    models = [
        AnthropicBackend(
            client,
            model=model,
            max_output_tokens=settings.max_output_tokens,
            timeout_seconds=settings.anthropic_timeout_seconds,
        )
        for model in settings.model_chain()
    ]
    fallback = OfflineBackend() if settings.fallback == "offline" else None
    budget = InputBudget(
        limit=min(
            settings.max_input_tokens,
            settings.context_window_tokens - settings.max_output_tokens,
        ),
        prompt_bytes=len(SYSTEM_PROMPT.encode()) + len(json.dumps(OUTPUT_SCHEMA).encode()),
        count=models[0].count_tokens,
    )
    return ModelChain(models, fallback=fallback, metrics=metrics), budget
