"""Verifying Tandem access tokens: EdDSA JWTs checked against the users service's keys.

The users service signs access tokens (`users.v1.AuthService`) and publishes the public
keys as a JSON Web Key Set; anything that accepts a token verifies it here, holding no
secret. `KeySet` caches the JWKS and fetches it again when a token names a key it does
not know, at most once per `min_refetch_seconds`, so a flood of garbage `kid`s cannot
hammer the users service. Until its first fetch succeeds it retries sooner (a back-off
from `first_retry_seconds`, doubling up to `min_refetch_seconds`), and `KeySet.warm`
fetches it before any token asks, so a cold start does not refuse calls for long.
`TokenVerifier.verify` checks, in this order:

- the header: `alg` must be EdDSA (never `none`, never an HMAC keyed with a public key);
- the key: `kid` must name a published key (UNKNOWN_SIGNING_KEY otherwise);
- the signature, `iss`, `aud` (WRONG_AUDIENCE), `exp` (TOKEN_EXPIRED), `iat`;
- `exp - iat` within the configured maximum (TOKEN_LIFETIME_TOO_LONG), whatever the
  signature says, so a leaked signing key cannot mint tokens that outlive a rotation;
- the claims Tandem needs: `sub`, `jti`, `role`, and `sid` for a user's token or
  `client_id` and `scope` for a service account's (role `service`).

A token that passed is remembered until it expires: an Ed25519 verification costs tens
of microseconds and a client sends the same token with every request.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import jwt

log = logging.getLogger(__name__)

ALGORITHM = "EdDSA"
SERVICE_ROLE = "service"
ROLES = frozenset({"user", "admin", SERVICE_ROLE})
_REQUIRED_CLAIMS = ["iss", "aud", "sub", "iat", "exp", "jti", "role"]

# Stable reasons (google.rpc.ErrorInfo) of a refused token.
# Reasons, not passwords: names of ways a token fails.
TOKEN_EXPIRED = "TOKEN_EXPIRED"  # noqa: S105
TOKEN_INVALID = "TOKEN_INVALID"  # noqa: S105
UNKNOWN_SIGNING_KEY = "UNKNOWN_SIGNING_KEY"
WRONG_AUDIENCE = "WRONG_AUDIENCE"
TOKEN_LIFETIME_TOO_LONG = "TOKEN_LIFETIME_TOO_LONG"  # noqa: S105

JwksSource = Callable[[], Awaitable[Mapping[str, Any]]]


class TokenRejected(Exception):
    """The token cannot be accepted; `reason` is stable, the message is for people."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class KeysUnavailable(Exception):
    """No key set could be fetched yet: a fault of the key source, not of the token.

    `retry_after`: seconds until the key set may fetch again.
    """

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(frozen=True, slots=True)
class AccessClaims:
    """What a verified access token says: a user's (with its session) or a service's."""

    # The user's id, or the service account's name.
    subject: str
    role: str
    # A user's token only: the session it belongs to.
    session_id: str | None
    # A service account's token only: what it may do.
    scopes: frozenset[str]
    token_id: str
    issued_at: int
    expires_at: int

    @property
    def is_service(self) -> bool:
        return self.role == SERVICE_ROLE

    @property
    def user_id(self) -> str:
        """The account a user's token acts for (the subject)."""
        return self.subject


def keys_from_jwks(jwks: Mapping[str, Any]) -> dict[str, jwt.PyJWK]:
    """The usable Ed25519 keys of a JWKS by `kid`; others are skipped with a warning."""
    found: dict[str, jwt.PyJWK] = {}
    for entry in jwks.get("keys", ()):
        kid = entry.get("kid") if isinstance(entry, Mapping) else None
        if not isinstance(kid, str) or not kid:
            log.warning("skipping a JWKS entry without a kid")
            continue
        try:
            key = jwt.PyJWK(dict(entry), algorithm=ALGORITHM)
        except jwt.PyJWTError as exc:
            log.warning("skipping JWKS key %s: %s", kid, exc)
            continue
        found[kid] = key
    return found


class KeySet:
    """The verification keys by `kid`, fetched from `source` and cached.

    The set is fetched on first use, again once it is older than `max_age_seconds`
    (a failed refresh keeps the old keys), and again when a token names an unknown
    `kid` - but never more than once per `min_refetch_seconds`, and concurrent
    lookups share one fetch.

    Until a fetch has succeeded once, a failed one is retried sooner: after
    `first_retry_seconds`, then twice as long each time, up to `min_refetch_seconds`
    (or `first_retry_seconds`, if that is longer).
    A cold start (the source's first call losing to a name lookup, or the source
    starting later) then refuses calls for a moment, not `min_refetch_seconds`; an
    outage after that is still asked about at most once per `min_refetch_seconds`.
    """

    def __init__(
        self,
        source: JwksSource,
        *,
        max_age_seconds: float = 300.0,
        min_refetch_seconds: float = 10.0,
        first_retry_seconds: float = 0.25,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._source = source
        self._max_age = max_age_seconds
        self._min_refetch = min_refetch_seconds
        self._clock = clock
        self._sleep = sleep
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        # The earliest time the next fetch may start, and the back-off of the next
        # failure while no fetch has succeeded yet.
        self._next_fetch_at = -math.inf
        self._retry_delay = first_retry_seconds
        # Not below the first delay: with min_refetch_seconds 0, warm() must not spin.
        self._max_retry_delay = max(first_retry_seconds, min_refetch_seconds)
        self._failure: Exception | None = None
        self._fetching: asyncio.Task[None] | None = None
        self.fetches = 0

    def cached(self, kid: str) -> jwt.PyJWK | None:
        if self._fetched_at is not None and self._clock() - self._fetched_at < self._max_age:
            return self._keys.get(kid)
        return None

    async def get(self, kid: str) -> jwt.PyJWK:
        key = self.cached(kid)
        if key is not None:
            return key
        if self._may_fetch(kid):
            await self._fetch()
        if self._fetched_at is None:
            raise self._unavailable()
        key = self._keys.get(kid)
        if key is None:
            raise TokenRejected(UNKNOWN_SIGNING_KEY, "the access token's signing key is unknown")
        return key

    async def warm(self) -> None:
        """Fetch the keys before any token asks for them: until a fetch succeeds, as
        soon as each failure's back-off allows (sharing fetches that tokens started).

        For a process's start, run in the background: it returns only once the keys
        are in, however late the source comes up, and may be cancelled.
        """
        while self._fetched_at is None:
            wait = self._next_fetch_at - self._clock()
            if wait > 0 and self._fetching is None:
                await self._sleep(wait)
                continue
            await self._fetch()
            if self._fetched_at is None:
                log.warning(
                    "the token signing keys are unavailable; fetching them again in %.2fs: %s",
                    self._next_fetch_at - self._clock(),
                    self._failure,
                )
        log.info("fetched %d token signing keys", len(self._keys))

    def _may_fetch(self, kid: str) -> bool:
        if self._fetching is not None:
            return True
        now = self._clock()
        if now < self._next_fetch_at:
            return False
        stale = self._fetched_at is None or now - self._fetched_at >= self._max_age
        return stale or kid not in self._keys

    def _unavailable(self) -> KeysUnavailable:
        retry_after = max(0.0, self._next_fetch_at - self._clock())
        return KeysUnavailable(
            f"the token signing keys are unavailable: {self._failure}", retry_after=retry_after
        )

    async def _fetch(self) -> None:
        if self._fetching is None:
            self._fetching = asyncio.ensure_future(self._refresh())
        # Shielded: one waiter giving up must not cancel the others' fetch.
        await asyncio.shield(self._fetching)

    async def _refresh(self) -> None:
        """One fetch; it never raises, so that it needs no waiter: what failed is kept
        for the waiters (and those that come later) to raise."""
        self._next_fetch_at = self._clock() + self._min_refetch
        self.fetches += 1
        try:
            jwks = await self._source()
        # Whatever the source raises, the keys could not be fetched.
        except Exception as exc:  # noqa: BLE001
            self._failure = exc
            if self._fetched_at is None:
                self._next_fetch_at = self._clock() + self._retry_delay
                self._retry_delay = min(2 * self._retry_delay, self._max_retry_delay)
                return
            log.warning("keeping the cached token signing keys: fetching them failed: %s", exc)
            self._fetched_at = self._clock()
            return
        finally:
            self._fetching = None
        self._keys = keys_from_jwks(jwks)
        self._fetched_at = self._clock()


class TokenVerifier:
    def __init__(
        self,
        keys: KeySet,
        *,
        issuer: str,
        audience: str,
        max_lifetime_seconds: int,
        leeway_seconds: int = 30,
        clock: Callable[[], float] = time.time,
        max_remembered: int = 10_000,
    ) -> None:
        self.keys = keys
        self._issuer = issuer
        self._audience = audience
        self._max_lifetime = max_lifetime_seconds
        self._leeway = leeway_seconds
        self._clock = clock
        self._max_remembered = max_remembered
        self._verified: dict[str, AccessClaims] = {}

    async def verify(self, token: str, *, allow_expired: bool = False) -> AccessClaims:
        """The claims of a valid access token; TokenRejected otherwise.

        `allow_expired` accepts an expired token whose signature holds (revocation
        ends the session of an expired token too).
        """
        known = self._verified.get(token)
        if known is not None:
            if allow_expired or self._clock() < known.expires_at + self._leeway:
                return known
            del self._verified[token]
            raise TokenRejected(TOKEN_EXPIRED, "the access token has expired")
        claims = await self._decode(token, allow_expired=allow_expired)
        if not allow_expired:
            if len(self._verified) >= self._max_remembered:
                self._verified.clear()
            self._verified[token] = claims
        return claims

    async def _decode(self, token: str, *, allow_expired: bool) -> AccessClaims:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _invalid() from None
        kid = header.get("kid")
        if header.get("alg") != ALGORITHM or not isinstance(kid, str) or not kid:
            raise _invalid()
        key = await self.keys.get(kid)
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[ALGORITHM],
                audience=self._audience,
                issuer=self._issuer,
                # Times are checked below, against this verifier's clock.
                options={
                    "require": _REQUIRED_CLAIMS,
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                },
            )
        except jwt.InvalidAudienceError:
            raise TokenRejected(
                WRONG_AUDIENCE, "the access token is meant for another audience"
            ) from None
        except jwt.PyJWTError:
            raise _invalid() from None
        return self._checked(claims, allow_expired=allow_expired)

    def _checked(self, claims: Mapping[str, Any], *, allow_expired: bool) -> AccessClaims:
        issued_at, expires_at = claims["iat"], claims["exp"]
        if not isinstance(issued_at, int) or not isinstance(expires_at, int):
            raise _invalid()
        now = self._clock()
        if issued_at > now + self._leeway:
            raise _invalid()
        if not allow_expired and now >= expires_at + self._leeway:
            raise TokenRejected(TOKEN_EXPIRED, "the access token has expired")
        if expires_at - issued_at > self._max_lifetime:
            raise TokenRejected(
                TOKEN_LIFETIME_TOO_LONG, "the access token claims a longer life than allowed"
            )
        strings = [claims[name] for name in ("sub", "jti", "role")]
        if not all(isinstance(value, str) and value for value in strings):
            raise _invalid()
        role = claims["role"]
        if role not in ROLES:
            raise _invalid()
        session_id: str | None = None
        scopes: frozenset[str] = frozenset()
        if role == SERVICE_ROLE:
            scope = claims.get("scope")
            if not isinstance(scope, str) or claims.get("client_id") != claims["sub"]:
                raise _invalid()
            scopes = frozenset(scope.split())
        else:
            session_id = claims.get("sid")
            if not isinstance(session_id, str) or not session_id:
                raise _invalid()
        return AccessClaims(
            subject=claims["sub"],
            role=role,
            session_id=session_id,
            scopes=scopes,
            token_id=claims["jti"],
            issued_at=issued_at,
            expires_at=expires_at,
        )


def _invalid() -> TokenRejected:
    return TokenRejected(TOKEN_INVALID, "the access token is invalid")


def bearer_token(metadata: Sequence[tuple[str, str | bytes]] | None) -> str | None:
    """The token of a call's `authorization: Bearer …` metadata; None when absent.

    A malformed header is TokenRejected, not None: a caller that meant to send a token
    must not be taken for one that sent none.
    """
    for key, value in metadata or ():
        if key != "authorization":
            continue
        scheme, _, token = (value if isinstance(value, str) else "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise TokenRejected(TOKEN_INVALID, "authorization must be `Bearer <access token>`")
        return token.strip()
    return None
