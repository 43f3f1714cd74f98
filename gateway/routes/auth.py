"""`/v1/auth/token` (RFC 6749), `/v1/auth/revoke` (RFC 7009) and the JWKS (RFC 7517).

The users service issues, rotates and revokes the tokens; these routes translate the
OAuth 2 forms into its `AuthService` calls. Errors are problems that also carry the
OAuth fields (`error`, `error_description`), so OAuth clients and Swagger UI's
"Authorize" show the real reason.
"""

from __future__ import annotations

from typing import Annotated

import grpc
from fastapi import Form, Request, Response

from gateway import convert, media
from gateway.client_address import ClientMetadata
from gateway.deps import RuntimeDep
from gateway.paths import REVOKE_URL, TOKEN_URL
from gateway.problems import ProblemError, problem_responses
from gateway.refusals import LOG_IN, account_of
from gateway.routes import resource_router
from gateway.schemas import JsonWebKeySet, RevokeForm, Token, TokenForm
from gateway.upstream_errors import UpstreamError
from servicekit.callers import jwks_document
from tandem_protos.users.v1 import auth_pb2

router = resource_router(tags=["auth"])

# RFC 6749 §5.1: responses carrying tokens are not to be cached.
_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
_HINTS = {
    "access_token": auth_pb2.TOKEN_TYPE_HINT_ACCESS_TOKEN,
    "refresh_token": auth_pb2.TOKEN_TYPE_HINT_REFRESH_TOKEN,
}


def oauth_error(
    status: int, error: str, description: str, *, reason: str | None = None
) -> ProblemError:
    """A problem that is also an RFC 6749 §5.2 error response."""
    return ProblemError(
        status,
        description,
        reason=reason,
        headers=_NO_STORE,
        extra={"error": error, "error_description": description},
    )


def _as_oauth(exc: UpstreamError) -> ProblemError:
    if exc.grpc_code == grpc.StatusCode.UNAUTHENTICATED:
        return oauth_error(400, "invalid_grant", exc.detail, reason=exc.reason)
    if exc.grpc_code == grpc.StatusCode.INVALID_ARGUMENT:
        return oauth_error(400, "invalid_request", exc.detail, reason=exc.reason)
    # Past a login limit (429) as when unavailable: the client may retry later.
    error = "temporarily_unavailable" if exc.status in (429, 503, 504) else "server_error"
    exc.extra = {"error": error, "error_description": exc.detail}
    return exc


@router.post(
    TOKEN_URL,
    response_model=Token,
    summary="Log in, or refresh a session's tokens",
    description=(
        "OAuth 2 token endpoint. `grant_type=password` with `username` (the email) and "
        "`password` starts a session; `grant_type=refresh_token` with `refresh_token` "
        "trades it for a new pair (the old refresh token stops working; presenting it "
        "again later ends the session). Errors carry `error` and `error_description` "
        "(RFC 6749 §5.2). After repeated failed logins, 429 with `Retry-After`."
    ),
    responses=problem_responses(400, 413, 415, 429, 503, 504),
)
async def issue_token(
    form: Annotated[TokenForm, Form()],
    runtime: RuntimeDep,
    client: ClientMetadata,
    http: Request,
) -> Response:
    _read_as_form(http)
    request = _grant(form)
    auth = runtime.upstreams.auth
    # Password grants are limited; a refusal is kept until it runs out (gateway.refusals).
    account = account_of(form.username) if request.HasField("password") else None
    try:
        if account is not None:
            await runtime.refusals.check(LOG_IN, client, account, http.scope)
        # Logins are limited per client address, which the users service takes from us.
        issued = await auth.call(auth.stub.IssueToken, request, metadata=client)
    except UpstreamError as exc:
        if account is not None:
            runtime.refusals.remember_for(LOG_IN, client, account, exc)
        raise _as_oauth(exc) from None
    content = {
        "access_token": issued.access_token,
        "token_type": issued.token_type,
        "expires_in": issued.expires_in,
        "refresh_token": issued.refresh_token,
    }
    return convert.json_response(content, headers=_NO_STORE)


def _read_as_form(request: Request) -> None:
    # Any other body reads as an empty form, whose fields would all be "missing".
    wrong_type = media.unsupported(request, media.FORM)
    if wrong_type is not None:
        raise oauth_error(415, "invalid_request", wrong_type)


def _grant(form: TokenForm) -> auth_pb2.IssueTokenRequest:
    if form.grant_type == "password":
        missing = [name for name in ("username", "password") if not getattr(form, name)]
        if missing:
            raise oauth_error(400, "invalid_request", f"{' and '.join(missing)} required")
        grant = auth_pb2.PasswordGrant(email=form.username or "", password=form.password or "")
        return auth_pb2.IssueTokenRequest(password=grant)
    if form.grant_type == "refresh_token":
        if not form.refresh_token:
            raise oauth_error(400, "invalid_request", "refresh_token required")
        refresh = auth_pb2.RefreshTokenGrant(refresh_token=form.refresh_token)
        return auth_pb2.IssueTokenRequest(refresh_token=refresh)
    if not form.grant_type:
        raise oauth_error(400, "invalid_request", "grant_type required")
    raise oauth_error(
        400,
        "unsupported_grant_type",
        "grant_type must be password or refresh_token",
        reason="UNSUPPORTED_GRANT_TYPE",
    )


@router.post(
    REVOKE_URL,
    status_code=200,
    # RFC 7009 §2.2: the body of the answer is empty.
    response_class=Response,
    summary="Log out: revoke a refresh or access token",
    description=(
        "RFC 7009: ends the session of the token (`token_type_hint`: `refresh_token` or "
        "`access_token`). Answers 200 for an unknown or already revoked token too."
    ),
    responses={
        200: {"description": "revoked (or unknown)"},
        **problem_responses(400, 415, 503, 504),
    },
)
async def revoke_token(
    form: Annotated[RevokeForm, Form()], runtime: RuntimeDep, http: Request
) -> Response:
    _read_as_form(http)
    if not form.token:
        raise oauth_error(400, "invalid_request", "token required")
    hint = _HINTS.get(form.token_type_hint or "", auth_pb2.TOKEN_TYPE_HINT_UNSPECIFIED)
    auth = runtime.upstreams.auth
    try:
        ended = await auth.call(
            auth.stub.RevokeToken,
            auth_pb2.RevokeTokenRequest(token=form.token, token_type_hint=hint),
        )
    except UpstreamError as exc:
        raise _as_oauth(exc) from None
    if ended.session_id:
        runtime.sessions.forget(ended.session_id)
    return Response(status_code=200, headers=_NO_STORE)


@router.get(
    "/.well-known/jwks.json",
    response_model=JsonWebKeySet,
    summary="The public keys that verify access tokens (JWKS, RFC 7517)",
    responses=problem_responses(503, 504),
)
async def jwks(runtime: RuntimeDep) -> Response:
    auth = runtime.upstreams.auth
    reply = await auth.call(
        auth.stub.GetJsonWebKeySet, auth_pb2.GetJsonWebKeySetRequest(), authorization=""
    )
    return convert.json_response(
        jwks_document(reply),
        headers={"Cache-Control": "public, max-age=300"},
    )
