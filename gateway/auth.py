"""Access tokens (JWT, PyJWT) and the short memory of which accounts are still live.

A token says who its bearer is (`sub`, the user id) until it expires; it is signed with
`GATEWAY_JWT_SECRET` and carries `iat`, `exp`, `iss`, `aud` and a unique `jti`, all
checked on every request. A token alone cannot know that its account was deleted since,
so each bearer request also checks the account with the users service, remembering a
live answer for `GATEWAY_AUTH_CACHE_SECONDS` (`LivenessCache`). A DELETE through this
gateway forgets the account at once; another replica may still accept the deleted
account's token for at most that many seconds.
"""

from __future__ import annotations

import logging
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass

import jwt

from gateway.settings import GatewaySettings

log = logging.getLogger(__name__)

_REQUIRED_CLAIMS = ["sub", "iat", "exp", "iss", "aud", "jti"]


class InvalidToken(Exception):
    """The token is missing a claim, expired, forged or malformed; the message says which."""


@dataclass(frozen=True, slots=True)
class IssuedToken:
    token: str
    expires_in: int


class TokenService:
    def __init__(
        self,
        secret: str,
        *,
        algorithm: str,
        issuer: str,
        audience: str,
        ttl_seconds: int,
        clock: Callable[[], float] = time.time,
        max_verified: int = 10_000,
    ) -> None:
        self._secret = secret
        self._algorithm = algorithm
        self._issuer = issuer
        self._audience = audience
        self._ttl = ttl_seconds
        self._clock = clock
        self._max_verified = max_verified
        # token -> (subject, expiry), for tokens that passed the full check.
        self._verified: dict[str, tuple[str, float]] = {}

    @classmethod
    def from_settings(cls, settings: GatewaySettings) -> TokenService:
        if settings.jwt_secret is not None:
            secret = settings.jwt_secret.get_secret_value()
        else:
            log.warning(
                "GATEWAY_JWT_SECRET is not set: tokens are signed with a random key and will "
                "not survive a restart or work across replicas"
            )
            secret = secrets.token_urlsafe(48)
        return cls(
            secret,
            algorithm=settings.jwt_algorithm,
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            ttl_seconds=settings.token_ttl_seconds,
        )

    def issue(self, user_id: str) -> IssuedToken:
        now = int(self._clock())
        claims = {
            "sub": user_id,
            "iat": now,
            "exp": now + self._ttl,
            "iss": self._issuer,
            "aud": self._audience,
            "jti": uuid.uuid4().hex,
        }
        return IssuedToken(jwt.encode(claims, self._secret, algorithm=self._algorithm), self._ttl)

    def verify(self, token: str) -> str:
        """The user id a valid token names; InvalidToken otherwise.

        A token once verified is remembered until it expires (bounded; only tokens
        that passed the full check): checking an HMAC and decoding the claims costs
        tens of microseconds, and a client sends the same token with every request.
        """
        known = self._verified.get(token)
        if known is not None:
            subject, expires_at = known
            if self._clock() < expires_at:
                return subject
            del self._verified[token]
            raise InvalidToken("the access token has expired")
        subject, expires_at = self._decode(token)
        if len(self._verified) >= self._max_verified:
            self._verified.clear()
        self._verified[token] = (subject, expires_at)
        return subject

    def _decode(self, token: str) -> tuple[str, float]:
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[self._algorithm],
                audience=self._audience,
                issuer=self._issuer,
                options={"require": _REQUIRED_CLAIMS},
            )
        except jwt.ExpiredSignatureError:
            raise InvalidToken("the access token has expired") from None
        except jwt.PyJWTError:
            raise InvalidToken("the access token is invalid") from None
        subject = claims["sub"]
        if not isinstance(subject, str) or not subject:
            raise InvalidToken("the access token is invalid")
        return subject, float(claims["exp"])


class LivenessCache:
    """User ids recently seen live, each for `ttl` seconds; ttl 0 remembers nothing."""

    def __init__(
        self,
        ttl: float,
        *,
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ttl = ttl
        self._max_entries = max_entries
        self._clock = clock
        self._live_until: dict[str, float] = {}

    def is_live(self, user_id: str) -> bool:
        until = self._live_until.get(user_id)
        if until is None:
            return False
        if until <= self._clock():
            del self._live_until[user_id]
            return False
        return True

    def mark_live(self, user_id: str) -> None:
        if self._ttl <= 0:
            return
        if len(self._live_until) >= self._max_entries:
            self._prune()
        self._live_until[user_id] = self._clock() + self._ttl

    def forget(self, user_id: str) -> None:
        self._live_until.pop(user_id, None)

    def _prune(self) -> None:
        now = self._clock()
        for user_id in [u for u, until in self._live_until.items() if until <= now]:
            del self._live_until[user_id]
        # Still full of fresh entries: drop the oldest half (dicts keep insertion order).
        if len(self._live_until) >= self._max_entries:
            for user_id in list(self._live_until)[: self._max_entries // 2]:
                del self._live_until[user_id]
