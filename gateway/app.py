"""`create_app(settings)`: the gateway's FastAPI application.

The lifespan opens one channel per upstream on the serving loop and closes them at
shutdown; everything per request is in the routes, the dependencies and the one
middleware (`gateway.middleware`).
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.telemetry import TelemetryConfig

from gateway.auth import token_verifier
from gateway.cors import install_cors
from gateway.deps import (
    BEARER_SCHEME,
    BEARER_SCHEME_NAME,
    BEARER_SECURITY,
    Runtime,
    needs_token,
    session_owner,
)
from gateway.docs import install_docs
from gateway.middleware import RequestContextMiddleware
from gateway.problems import install_problem_handlers, use_problem_media_type
from gateway.readers import SessionReader, UserReader
from gateway.refusals import Refusals
from gateway.routes import analyses, auth, health, operation_id, operations, users
from gateway.schemas import PartialAnalysis
from gateway.settings import GatewaySettings
from gateway.upstreams import Upstreams
from servicekit.liveness import Liveness
from servicekit.metrics import serve as serve_metrics

log = logging.getLogger("gateway.app")

DESCRIPTION = """\
Tandem's public API: accounts and text analyses.

Log in at `POST /v1/auth/token` (OAuth2 password form; `username` is the email) and
send the access token as `Authorization: Bearer …`; trade the refresh token at the same
endpoint (`grant_type=refresh_token`) before the access token expires, and log out at
`POST /v1/auth/revoke`. The public keys that verify access tokens are at
`/.well-known/jwks.json`. Every error is an RFC 9457 problem
(`application/problem+json`) with `code` (the gRPC status name) and `request_id`;
send `X-Request-ID` to choose the id, which every response echoes."""


_REQUEST_ID_HEADER = {
    "description": "the request's id: the client's X-Request-ID when well-formed, else a new one",
    "required": True,
    "schema": {"type": "string"},
}


class GatewayApp(FastAPI):
    def openapi(self) -> dict[str, Any]:
        schema = use_problem_media_type(super().openapi())
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        # The payload of the stream route's `partial` events (named by its itemSchema).
        components.setdefault(
            "PartialAnalysis",
            PartialAnalysis.model_json_schema(ref_template="#/components/schemas/{model}"),
        )
        schema["components"].setdefault("securitySchemes", {})[BEARER_SCHEME_NAME] = BEARER_SCHEME
        for path_item in schema.get("paths", {}).values():
            for operation in path_item.values():
                for response in operation.get("responses", {}).values():
                    response.setdefault("headers", {})["X-Request-ID"] = _REQUEST_ID_HEADER
                    stream = response.get("content", {}).get("text/event-stream", {})
                    # FastAPI adds `schema: string`; with an itemSchema, `schema` would
                    # have to describe the whole stream (OpenAPI 3.2).
                    if "itemSchema" in stream:
                        stream.pop("schema", None)
        return schema


_NO_TELEMETRY: TelemetryConfig = {
    "tracing": False,
    "metrics": False,
    "logs": False,
    "operation_spans": False,
}

# The line at shutdown that says how well account reads coalesced; the gateway benchmark
# reads it back through parse_account_reads.
ACCOUNT_READS = "%d account reads took %d users calls"
_ACCOUNT_READS_LINE = re.compile(r"(\d+) account reads took (\d+) users calls")


def parse_account_reads(line: str) -> tuple[int, int] | None:
    """(reads, users calls) in a line logged with ACCOUNT_READS; None for any other line."""
    match = _ACCOUNT_READS_LINE.search(line)
    return (int(match[1]), int(match[2])) if match else None


def create_app(settings: GatewaySettings) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # First: the middleware and the upstreams record only while metrics are served.
        served = serve_metrics(settings.metrics_addr) if settings.metrics_addr else None
        upstreams = Upstreams(settings)
        reader = UserReader(upstreams.users, coalesce=settings.coalesce_reads)
        checks = SessionReader(upstreams.auth, coalesce=settings.coalesce_reads)
        app.state.runtime = Runtime(
            settings,
            upstreams,
            token_verifier(settings, upstreams.auth),
            Liveness(session_owner(checks), ttl=settings.auth_cache_seconds),
            reader,
            checks,
            Refusals(early_retry_delay=settings.early_retry_delay_seconds),
        )
        try:
            yield
        finally:
            if served is not None:
                await served.aclose()
            await upstreams.close()
            log.info(ACCOUNT_READS, reader.reads, reader.calls)
            log.info("%d session checks took %d users calls", checks.reads, checks.calls)

    app = GatewayApp(
        title="Tandem API",
        version="1.0.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
        generate_unique_id_function=operation_id,
        # FastAPI's native OpenTelemetry looks up the global providers on every request;
        # nothing here exports telemetry, so it is off.
        telemetry=_NO_TELEMETRY,
    )
    install_problem_handlers(app)
    for module in (users, auth, analyses, operations, health):
        for route in module.router.routes:
            # The token check is a plain dependency (cheaper than FastAPI's security
            # classes), so the OpenAPI document learns here which routes need a token.
            if isinstance(route, APIRoute) and needs_token(route.dependant):
                route.openapi_extra = {**(route.openapi_extra or {}), **BEARER_SECURITY}
        # Registered on the app itself: FastAPI resolves an included router's routes
        # again on every request (the gateway benchmark's profile shows the cost).
        app.router.routes.extend(module.router.routes)
    install_docs(app)
    # Added first, so inside the middleware below: preflights get request ids and logs.
    install_cors(app, settings.cors_origins)
    app.add_middleware(
        RequestContextMiddleware,
        max_body_bytes=settings.max_body_bytes,
        max_in_flight=settings.max_in_flight,
        hsts_seconds=settings.hsts_seconds,
        trusted_proxies=settings.trusted_proxies,
        access_log=settings.access_log,
    )
    return app
