"""Verifying Tandem access tokens: EdDSA JWTs checked against the users service's keys.

The users service signs access tokens (`users.v1.AuthService`) and publishes the public
keys as a JSON Web Key Set; anything that accepts a token verifies it here, holding no
secret. `KeySet` caches the JWKS and fetches it again when a token names a key it does
not know, at most once per `min_refetch_seconds`, so a flood of garbage `kid`s cannot
hammer the users service. `TokenVerifier.verify` checks, in this order:

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
    """No key set could be fetched yet: a fault of the key source, not of the token."""


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
    """

    def __init__(
        self,
        source: JwksSource,
        *,
        max_age_seconds: float = 300.0,
        min_refetch_seconds: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._source = source
        self._max_age = max_age_seconds
        self._min_refetch = min_refetch_seconds
        self._clock = clock
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at: float | None = None
        self._attempted_at: float | None = None
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
        elif self._fetched_at is None:
            raise KeysUnavailable("the token signing keys are unavailable; retry shortly")
        key = self._keys.get(kid)
        if key is None:
            raise TokenRejected(UNKNOWN_SIGNING_KEY, "the access token's signing key is unknown")
        return key

    def _may_fetch(self, kid: str) -> bool:
        if self._fetching is not None or self._attempted_at is None:
            return True
        now = self._clock()
        if now - self._attempted_at < self._min_refetch:
            return False
        stale = self._fetched_at is None or now - self._fetched_at >= self._max_age
        return stale or kid not in self._keys

    async def _fetch(self) -> None:
        if self._fetching is None:
            self._fetching = asyncio.ensure_future(self._refresh())
        # Shielded: one waiter giving up must not cancel the others' fetch.
        await asyncio.shield(self._fetching)

    async def _refresh(self) -> None:
        self._attempted_at = self._clock()
        self.fetches += 1
        try:
            jwks = await self._source()
        except Exception as exc:
            if self._fetched_at is None:
                raise KeysUnavailable(f"the token signing keys are unavailable: {exc}") from exc
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
