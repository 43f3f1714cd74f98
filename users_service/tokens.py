"""Minting tokens: EdDSA-signed access JWTs, and opaque refresh tokens stored as hashes."""

from __future__ import annotations

import hashlib
import secrets
import uuid
from dataclasses import dataclass
from datetime import datetime

import jwt

from servicekit.tokens import ALGORITHM, SERVICE_ROLE
from users_service.signing_keys import SigningKeys

# A recognisable prefix lets secret scanners find leaked refresh tokens.
REFRESH_TOKEN_PREFIX = "tndr_"  # noqa: S105 - a prefix, not a token


@dataclass(frozen=True, slots=True)
class AccessToken:
    token: str
    expires_in: int


class AccessTokens:
    """Signs access tokens with the one signing key (its `kid` in the header)."""

    def __init__(self, keys: SigningKeys, *, issuer: str, audience: str, ttl_seconds: int) -> None:
        self.keys = keys
        self._issuer = issuer
        self._audience = audience
        self._ttl = ttl_seconds

    def issue(
        self, *, user_id: uuid.UUID, session_id: uuid.UUID, role: str, now: datetime, ends: datetime
    ) -> AccessToken:
        issued_at = int(now.timestamp())
        # Never past the session's own end.
        expires_at = min(issued_at + self._ttl, int(ends.timestamp()))
        claims = {
            "iss": self._issuer,
            "aud": self._audience,
            "sub": str(user_id),
            "iat": issued_at,
            "exp": expires_at,
            "jti": uuid.uuid4().hex,
            "sid": str(session_id),
            "role": role,
        }
        return AccessToken(self._sign(claims), expires_at - issued_at)

    def issue_service(
        self, *, client_id: str, scopes: frozenset[str], now: datetime
    ) -> AccessToken:
        """A service account's token (RFC 9068's claims: `sub` and `client_id` alike)."""
        issued_at = int(now.timestamp())
        claims = {
            "iss": self._issuer,
            "aud": self._audience,
            "sub": client_id,
            "client_id": client_id,
            "iat": issued_at,
            "exp": issued_at + self._ttl,
            "jti": uuid.uuid4().hex,
            "role": SERVICE_ROLE,
            "scope": " ".join(sorted(scopes)),
        }
        return AccessToken(self._sign(claims), self._ttl)

    def _sign(self, claims: dict[str, object]) -> str:
        return jwt.encode(
            claims,
            self.keys.signing_key,
            algorithm=ALGORITHM,
            headers={"kid": self.keys.signing_kid},
        )


def new_refresh_token() -> str:
    """256 random bits, base64url."""
    return REFRESH_TOKEN_PREFIX + secrets.token_urlsafe(32)


def refresh_token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def looks_like_refresh_token(token: str) -> bool:
    return token.startswith(REFRESH_TOKEN_PREFIX)
