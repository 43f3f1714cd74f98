"""Dependencies of the routes, as `Annotated` aliases: routes read like their signature.

    async def get_user(id: UserId, caller: CurrentUser, runtime: RuntimeDep) -> ...

Each dependency reads what it needs from the request itself rather than from other
dependencies: FastAPI spends several microseconds on every node of a dependency graph
on every request, and these run on every request. For the same reason every one is
`async def` (FastAPI runs plain `def` ones in a thread pool).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, cast

from fastapi import Depends, Path, Query, Request
from fastapi.dependencies.models import Dependant

from gateway.auth import Principal
from gateway.paths import TOKEN_URL
from gateway.problems import ProblemError, unauthorized
from gateway.readers import GONE, SessionReader, UserReader
from gateway.refusals import Refusals
from gateway.settings import GatewaySettings
from gateway.upstream_errors import UpstreamError
from gateway.upstreams import AiStub, OperationsStub, Upstream, Upstreams, UsersStub
from servicekit.callers import live_owner
from servicekit.errors import retry_seconds
from servicekit.liveness import Liveness, Lookup
from servicekit.tokens import AccessClaims, KeysUnavailable, TokenRejected, TokenVerifier

BEARER_SCHEME_NAME = "OAuth2PasswordBearer"
# How the OpenAPI document describes the bearer token (Swagger UI's "Authorize" logs in
# through TOKEN_URL); `GatewayApp.openapi` attaches it to each route that needs a token.
BEARER_SCHEME: dict[str, Any] = {
    "type": "oauth2",
    "flows": {"password": {"tokenUrl": TOKEN_URL, "refreshUrl": TOKEN_URL, "scopes": {}}},
}

BEARER_SECURITY: dict[str, Any] = {"security": [{BEARER_SCHEME_NAME: []}]}


@dataclass(frozen=True, slots=True)
class Runtime:
    """What the routes share, built in the app's lifespan (`app.state.runtime`)."""

    settings: GatewaySettings
    upstreams: Upstreams
    tokens: TokenVerifier
    sessions: Liveness
    # Every read of one account by id goes through here (coalesced calls).
    user_reader: UserReader
    # Every check that a token's session is live, likewise.
    session_reader: SessionReader
    # The users service's refusals of logins and sign-ups, until they run out.
    refusals: Refusals


def runtime_of(request: Request) -> Runtime:
    return cast(Runtime, request.app.state.runtime)


async def get_runtime(request: Request) -> Runtime:
    return runtime_of(request)


async def get_users(request: Request) -> Upstream[UsersStub]:
    return runtime_of(request).upstreams.users


async def get_ai(request: Request) -> Upstream[AiStub]:
    return runtime_of(request).upstreams.ai


async def get_operations(request: Request) -> Upstream[OperationsStub]:
    return runtime_of(request).upstreams.operations


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
UsersUpstream = Annotated[Upstream[UsersStub], Depends(get_users)]
AiUpstream = Annotated[Upstream[AiStub], Depends(get_ai)]
OperationsUpstream = Annotated[Upstream[OperationsStub], Depends(get_operations)]

SESSION_ENDED = "the session of this access token has ended; log in again"


def bearer_token(request: Request) -> str:
    """The request's bearer token; 401 for a request without one."""
    scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise unauthorized(
            "this route needs a bearer token (Authorization: Bearer …)", reason="TOKEN_MISSING"
        )
    return token.strip()


async def verified_claims(runtime: Runtime, token: str) -> AccessClaims:
    """The claims of a valid token; 401 with the verifier's reason, 503 without keys."""
    try:
        return await runtime.tokens.verify(token)
    except TokenRejected as exc:
        raise unauthorized(exc.message, reason=exc.reason) from None
    except KeysUnavailable as exc:
        # Retry-After: when the key set may fetch again.
        raise ProblemError(
            503,
            "the users service's signing keys are unavailable; retry shortly",
            reason="SIGNING_KEYS_UNAVAILABLE",
            headers={"Retry-After": str(retry_seconds(exc.retry_after))},
        ) from None


async def current_user(request: Request) -> Principal:
    """The caller: a valid bearer token of a user, whose session is still live."""
    runtime = runtime_of(request)
    token = bearer_token(request)
    claims = await verified_claims(runtime, token)
    if claims.session_id is None:
        raise unauthorized(
            "this API takes a user's access token, not a service's", reason="USER_TOKEN_REQUIRED"
        )
    if await runtime.sessions.owner(claims.session_id) != claims.user_id:
        raise unauthorized(SESSION_ENDED, reason="SESSION_ENDED")
    return Principal(claims.user_id, claims.session_id, claims.role, f"Bearer {token}")


def session_owner(reader: SessionReader) -> Lookup:
    """Asks the users service whose a session is, if it is live (the gateway's own call)."""

    async def owner(session_id: str, _credential: str) -> str | None:
        try:
            session = await reader.get(session_id)
        except UpstreamError as exc:
            if exc.grpc_code in GONE:
                return None
            raise
        return live_owner(session)

    return owner


CurrentUser = Annotated[Principal, Depends(current_user)]

UserId = Annotated[uuid.UUID, Path(description="the user's id")]

PageSize = Annotated[
    int | None, Query(ge=1, le=1000, description="at most this many items (default 50)")
]
PageToken = Annotated[
    str | None,
    Query(max_length=4096, description="the next_page_token of the previous page"),
]

_NEEDS_TOKEN: frozenset[Callable[..., Any]] = frozenset({current_user})


def needs_token(dependant: Dependant) -> bool:
    """Whether a route's dependencies include the bearer token check."""
    return any(sub.call in _NEEDS_TOKEN or needs_token(sub) for sub in dependant.dependencies)
