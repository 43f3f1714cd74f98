"""What the identity provider does: logins start sessions, refresh tokens rotate, tokens end.

A password grant checks the password (as `Accounts.authenticate` does), starts a session
and returns an access token plus its first refresh token. A refresh-token grant trades
the token for a new pair, once: a token presented again after it was rotated is reuse
(RFC 6819 §5.2.2.3) and ends the whole session - unless it comes within the grace period
of its rotation, which is what the loser of two concurrent refreshes, or a client that
lost the answer and retried, looks like; those get `invalid_grant` and the session goes
on. No grant ever returns tokens for a token that was already traded.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from servicekit.errors import NotFound, Unauthenticated
from servicekit.liveness import Liveness
from servicekit.tokens import TokenRejected, TokenVerifier
from users_service.accounts import Accounts
from users_service.domain import parse_ids
from users_service.policy import Action, Caller, allowed, authorize
from users_service.sessions_repository import (
    EndReason,
    Grant,
    Refused,
    Session,
    SessionsRepository,
)
from users_service.tokens import (
    AccessTokens,
    looks_like_refresh_token,
    new_refresh_token,
    refresh_token_hash,
)

log = logging.getLogger(__name__)

INVALID_GRANT = "the refresh token is invalid, expired or already used"


@dataclass(frozen=True, slots=True)
class Credentials:
    access_token: str
    expires_in: int
    refresh_token: str
    refresh_expire_time: datetime
    session_id: uuid.UUID
    user_id: uuid.UUID


@dataclass(frozen=True, slots=True)
class Ended:
    """The session a revocation ended, and its account."""

    session_id: uuid.UUID
    user_id: uuid.UUID


class Sessions:
    def __init__(
        self,
        accounts: Accounts,
        repository: SessionsRepository,
        tokens: AccessTokens,
        verifier: TokenVerifier,
        *,
        refresh_ttl: timedelta,
        session_max: timedelta,
        reuse_grace: timedelta,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        live: Liveness | None = None,
    ) -> None:
        self._accounts = accounts
        self._repository = repository
        self._tokens = tokens
        self._verifier = verifier
        self._refresh_ttl = refresh_ttl
        self._session_max = session_max
        self._reuse_grace = reuse_grace
        self._clock = clock
        self._live = live

    async def live_owner(self, session_id: str) -> str | None:
        """The account of a session that has neither ended nor expired; else None."""
        try:
            parsed = uuid.UUID(session_id)
        except ValueError:
            return None
        found = await self._repository.get_many([parsed])
        now = self._clock()
        for session in found:
            if session.end_time is None and session.expire_time > now:
                return str(session.user_id)
        return None

    async def password_grant(
        self, *, email: str, password: str, caller: Caller, client: str = ""
    ) -> Credentials:
        """A new session; `client` is the address the attempt counts against."""
        user = await self._accounts.authenticate(
            email=email, password=password, caller=caller, client=client
        )
        now = self._clock()
        session_end = now + self._session_max
        grant = Grant(
            user_id=user.id,
            role=user.role,
            session_id=uuid.uuid4(),
            session_expire_time=session_end,
            refresh_expire_time=min(now + self._refresh_ttl, session_end),
        )
        refresh_token = new_refresh_token()
        await self._repository.start(grant, refresh_hash=refresh_token_hash(refresh_token), now=now)
        return self._credentials(grant, refresh_token, now)

    async def refresh_grant(self, refresh_token: str, caller: Caller) -> Credentials:
        authorize(caller, Action.LOG_IN)
        if not looks_like_refresh_token(refresh_token):
            raise Unauthenticated(INVALID_GRANT, reason="INVALID_GRANT")
        now = self._clock()
        new_token = new_refresh_token()
        outcome = await self._repository.rotate(
            refresh_token_hash(refresh_token),
            refresh_token_hash(new_token),
            now=now,
            refresh_ttl=self._refresh_ttl,
            reuse_grace=self._reuse_grace,
        )
        if outcome is Refused.REUSED:
            log.warning("a rotated refresh token was presented again: its session is ended")
            raise Unauthenticated(
                "the refresh token was already used; its session has ended, log in again",
                reason="REFRESH_TOKEN_REUSED",
            )
        if isinstance(outcome, Refused):
            raise Unauthenticated(INVALID_GRANT, reason="INVALID_GRANT")
        return self._credentials(outcome, new_token, now)

    async def revoke(self, token: str, *, refresh_first: bool) -> Ended | None:
        """End the session of a refresh or access token; None if the token is not ours."""
        lookups = [self._refresh_session, self._access_session]
        if not refresh_first:
            lookups.reverse()
        for lookup in lookups:
            session_id = await lookup(token)
            if session_id is not None:
                now = self._clock()
                user_id = await self._repository.end(session_id, now=now, reason=EndReason.LOGOUT)
                if self._live is not None:
                    self._live.forget(str(session_id))
                return Ended(session_id, user_id) if user_id is not None else None
        return None

    async def get_many(self, session_ids: Sequence[str], caller: Caller) -> list[Session]:
        """Sessions in the order asked, ended ones included; all of them or NotFound.

        An account sees only its own sessions (an admin and a service with the
        `sessions.read` scope, every one): another's is as unknown as a made-up id.
        """
        parsed = parse_ids(session_ids)
        found = {
            s.id: s
            for s in await self._repository.get_many(set(parsed))
            if allowed(caller, Action.READ_SESSIONS, s.user_id)
        }
        for session_id in parsed:
            if session_id not in found:
                raise NotFound(
                    f"no session {session_id}",
                    reason="SESSION_NOT_FOUND",
                    metadata={"id": str(session_id)},
                )
        return [found[session_id] for session_id in parsed]

    def _credentials(self, grant: Grant, refresh_token: str, now: datetime) -> Credentials:
        access = self._tokens.issue(
            user_id=grant.user_id,
            session_id=grant.session_id,
            role=grant.role,
            now=now,
            ends=grant.session_expire_time,
        )
        return Credentials(
            access_token=access.token,
            expires_in=access.expires_in,
            refresh_token=refresh_token,
            refresh_expire_time=grant.refresh_expire_time,
            session_id=grant.session_id,
            user_id=grant.user_id,
        )

    async def _refresh_session(self, token: str) -> uuid.UUID | None:
        if not looks_like_refresh_token(token):
            return None
        return await self._repository.session_of_refresh_token(refresh_token_hash(token))

    async def _access_session(self, token: str) -> uuid.UUID | None:
        try:
            claims = await self._verifier.verify(token, allow_expired=True)
        except TokenRejected:
            return None
        if claims.session_id is None:
            return None
        try:
            return uuid.UUID(claims.session_id)
        except ValueError:
            return None
