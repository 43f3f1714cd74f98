"""Who is calling: the account of the call's bearer token, or a trusted service."""

from __future__ import annotations

import uuid
from typing import Any

from servicekit.errors import Unauthenticated
from servicekit.tokens import TokenRejected, TokenVerifier, bearer_token
from users_service.policy import Caller, Role


class CallerResolver:
    def __init__(self, verifier: TokenVerifier) -> None:
        self._verifier = verifier

    async def caller(self, context: Any) -> Caller:
        """The caller of a gRPC call, from its `authorization` metadata.

        A call without a token is a trusted internal service's (every caller could act
        as anyone before tokens existed; authenticating services comes next). A token
        that fails verification is UNAUTHENTICATED with the verifier's reason.
        """
        try:
            token = bearer_token(context.invocation_metadata())
            if token is None:
                return Caller.service()
            claims = await self._verifier.verify(token)
        except TokenRejected as exc:
            raise Unauthenticated(exc.message, reason=exc.reason) from None
        try:
            return Caller.account(
                uuid.UUID(claims.user_id), Role(claims.role), uuid.UUID(claims.session_id)
            )
        except ValueError:
            raise Unauthenticated("the access token is invalid", reason="TOKEN_INVALID") from None
