"""Who is calling: the account or service account of the call's bearer token.

Every call of every service needs one (the users service excepts the two calls that
hand out what verifies or makes tokens). A user's token also needs a live session:
one ended by a logout, a password change or a deletion is refused
(`servicekit.liveness`, asked of the users service's sessions).
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from google.protobuf.json_format import MessageToDict

from servicekit.authz import Caller, Role
from servicekit.errors import Unauthenticated, Unavailable
from servicekit.liveness import Liveness
from servicekit.settings import TokenCheckSettings
from servicekit.tokens import (
    AccessClaims,
    JwksSource,
    KeySet,
    KeysUnavailable,
    TokenRejected,
    TokenVerifier,
    bearer_token,
)
from tandem_client import Connection
from tandem_protos.users.v1 import auth_pb2

CREDENTIALS_MISSING = "CREDENTIALS_MISSING"
SESSION_ENDED = "SESSION_ENDED"


class CallerResolver:
    def __init__(
        self, verifier: TokenVerifier, sessions: Liveness, *, max_remembered: int = 10_000
    ) -> None:
        self._verifier = verifier
        self._sessions = sessions
        # The caller of each token seen, so a repeated token costs a lookup rather than
        # parsing its ids again; its expiry is still checked, by the verifier, each time.
        self._callers: dict[str, Caller] = {}
        self._max_remembered = max_remembered

    async def caller(self, context: Any) -> Caller:
        """The caller of a gRPC call, from its `authorization` metadata.

        No token, or one that fails verification or whose session ended, is
        UNAUTHENTICATED with a stable reason.
        """
        try:
            token = bearer_token(context.invocation_metadata())
            if token is None:
                raise Unauthenticated(
                    "this call needs `authorization: Bearer <access token>` metadata",
                    reason=CREDENTIALS_MISSING,
                )
            claims = await self._verifier.verify(token)
        except TokenRejected as exc:
            raise Unauthenticated(exc.message, reason=exc.reason) from None
        except KeysUnavailable as exc:
            # The retry delay is when the key set may fetch again: sooner is refused.
            raise Unavailable(
                "the keys that verify access tokens are unavailable; retry shortly",
                reason="SIGNING_KEYS_UNAVAILABLE",
                retry_after=exc.retry_after,
            ) from None
        caller = self._callers.get(token)
        if caller is None:
            caller = _caller_of(claims, token)
            if len(self._callers) >= self._max_remembered:
                self._callers.clear()
            self._callers[token] = caller
        if claims.session_id is None:
            return caller
        if await self._sessions.owner(claims.session_id, token) != claims.user_id:
            raise Unauthenticated(
                "the session of this access token has ended; log in again",
                reason=SESSION_ENDED,
            )
        return caller


def _caller_of(claims: AccessClaims, token: str) -> Caller:
    if claims.is_service:
        return Caller.service_account(claims.subject, claims.scopes, token=token)
    assert claims.session_id is not None, "a user's token always names its session"
    try:
        return Caller.account(
            uuid.UUID(claims.user_id),
            Role(claims.role),
            uuid.UUID(claims.session_id),
            token=token,
        )
    except ValueError:
        raise Unauthenticated("the access token is invalid", reason="TOKEN_INVALID") from None


def live_owner(session: auth_pb2.Session) -> str | None:
    """The account of a session the users service returned, if it has neither ended nor
    expired; else None."""
    if session.HasField("end_time"):
        return None
    if session.expire_time.ToDatetime(tzinfo=UTC) <= datetime.now(UTC):
        return None
    return str(session.user_id)


def jwks_source(users: Connection) -> JwksSource:
    """The users service's key set, fetched over gRPC (a call that needs no token)."""

    async def fetch() -> Mapping[str, Any]:
        reply = await users.call(
            users.auth.GetJsonWebKeySet, auth_pb2.GetJsonWebKeySetRequest(), token=""
        )
        return jwks_document(reply)

    return fetch


def jwks_document(reply: auth_pb2.JsonWebKeySet) -> dict[str, Any]:
    """The key set as RFC 7517 JSON: field names as in the proto."""
    document: dict[str, Any] = MessageToDict(reply, preserving_proto_field_name=True)
    return document


def remote_verifier(source: JwksSource, settings: TokenCheckSettings) -> TokenVerifier:
    """A verifier of the users service's tokens, with its keys fetched (from `source`)
    and cached."""
    keys = KeySet(
        source,
        max_age_seconds=settings.jwks_max_age_seconds,
        min_refetch_seconds=settings.jwks_min_refetch_seconds,
    )
    return TokenVerifier(
        keys,
        issuer=settings.token_issuer,
        audience=settings.token_audience,
        max_lifetime_seconds=settings.token_max_lifetime_seconds,
    )
