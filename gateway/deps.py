"""Dependencies of the routes, as `Annotated` aliases: routes read like their signature.

    async def get_user(id: UserId, caller: CurrentUser, users: UsersUpstream) -> ...

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

import grpc
from fastapi import Depends, Path, Query, Request
from fastapi.dependencies.models import Dependant

from gateway.auth import InvalidToken, LivenessCache, TokenService
from gateway.problems import ProblemError, unauthorized
from gateway.readers import UserReader
from gateway.settings import GatewaySettings
from gateway.upstreams import AiStub, Upstream, UpstreamError, Upstreams, UsersStub

TOKEN_URL = "/v1/auth/token"  # noqa: S105 - a URL, not a password
BEARER_SCHEME_NAME = "OAuth2PasswordBearer"
# How the OpenAPI document describes the bearer token (Swagger UI's "Authorize" logs in
# through TOKEN_URL); `GatewayApp.openapi` attaches it to each route that needs a token.
BEARER_SCHEME: dict[str, Any] = {
    "type": "oauth2",
    "flows": {"password": {"tokenUrl": TOKEN_URL, "scopes": {}}},
}

BEARER_SECURITY: dict[str, Any] = {"security": [{BEARER_SCHEME_NAME: []}]}


@dataclass(frozen=True, slots=True)
class Runtime:
    """What the routes share, built in the app's lifespan (`app.state.runtime`)."""

    settings: GatewaySettings
    upstreams: Upstreams
    tokens: TokenService
    liveness: LivenessCache
    # Every read of one account by id goes through here (coalesced calls).
    user_reader: UserReader


def runtime_of(request: Request) -> Runtime:
    return cast(Runtime, request.app.state.runtime)


async def get_runtime(request: Request) -> Runtime:
    return runtime_of(request)


async def get_users(request: Request) -> Upstream[UsersStub]:
    return runtime_of(request).upstreams.users


async def get_ai(request: Request) -> Upstream[AiStub]:
    return runtime_of(request).upstreams.ai


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
UsersUpstream = Annotated[Upstream[UsersStub], Depends(get_users)]
AiUpstream = Annotated[Upstream[AiStub], Depends(get_ai)]


def _bearer_subject(request: Request, runtime: Runtime) -> str:
    """The user id of the request's valid bearer token; 401 for any other request."""
    scheme, _, token = (request.headers.get("authorization") or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise unauthorized("this route needs a bearer token (Authorization: Bearer …)")
    try:
        return runtime.tokens.verify(token.strip())
    except InvalidToken as exc:
        raise unauthorized(str(exc)) from None


async def token_subject(request: Request) -> str:
    """The user id of a valid bearer token, not checked to be a live account."""
    return _bearer_subject(request, runtime_of(request))


# What the users service says of an id that is not a live account.
GONE = (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT)
ACCOUNT_GONE = "the account of this access token no longer exists"


async def current_user(request: Request) -> str:
    """The caller's user id: a valid bearer token whose account is still live."""
    runtime = runtime_of(request)
    subject = _bearer_subject(request, runtime)
    liveness = runtime.liveness
    if not liveness.is_live(subject):
        try:
            await runtime.user_reader.get(subject)
        except UpstreamError as exc:
            if exc.grpc_code in GONE:
                raise unauthorized(ACCOUNT_GONE) from None
            raise
        liveness.mark_live(subject)
    return subject


TokenSubject = Annotated[str, Depends(token_subject)]
CurrentUser = Annotated[str, Depends(current_user)]

UserId = Annotated[uuid.UUID, Path(description="the user's id")]


async def own_account(id: UserId, caller: CurrentUser) -> str:
    """The path's user id, when it is the caller's own: acting on others is 403."""
    if str(id) != caller:
        raise ProblemError(403, "you can act only on your own account")
    return caller


OwnAccount = Annotated[str, Depends(own_account)]

PageSize = Annotated[
    int | None, Query(ge=1, le=1000, description="at most this many items (default 50)")
]
PageToken = Annotated[
    str | None,
    Query(max_length=4096, description="the next_page_token of the previous page"),
]

_NEEDS_TOKEN: frozenset[Callable[..., Any]] = frozenset({token_subject, current_user})


def needs_token(dependant: Dependant) -> bool:
    """Whether a route's dependencies include the bearer token check."""
    return any(sub.call in _NEEDS_TOKEN or needs_token(sub) for sub in dependant.dependencies)
