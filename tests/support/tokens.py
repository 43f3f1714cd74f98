"""Access tokens for tests, signed with the tests' key as the users service signs them.

A service token stands for an internal caller (`Caller.service_account`) with the
scopes a test needs: all of them by default, which is what a test of a service's
behaviour (not of its authorisation) wants. User tokens come from the real users
service (IssueToken), since their sessions must exist.
"""

from __future__ import annotations

import secrets
import uuid
from collections.abc import Iterable
from datetime import UTC, datetime, timedelta

import jwt
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import gateway.settings
from servicekit import errors
from tests.support.keys import signing_key
from users_service.policy import Scope
from users_service.service_accounts import CLIENT_SECRET_PREFIX
from users_service.signing_keys import build_signing_keys
from users_service.tokens import AccessTokens

ALL_SCOPES = frozenset(scope.value for scope in Scope)
# The gateway's service account in every users database the tests migrate
# (tests.support.servers.migrate_users), and the secret the tests' gateways hold.
GATEWAY_CLIENT_ID = "gateway"
GATEWAY_SCOPES = frozenset(gateway.settings.GATEWAY_SCOPES)
GATEWAY_SECRET = CLIENT_SECRET_PREFIX + secrets.token_urlsafe(32)


def issuer(key: Ed25519PrivateKey | None = None) -> AccessTokens:
    """Signs tokens as the tests' users servers do (with another key, forged ones)."""
    return AccessTokens(
        build_signing_keys(key or signing_key(), []),
        issuer="tandem-users",
        audience="tandem-api",
        ttl_seconds=900,
    )


_TOKENS = issuer()


def service_token(scopes: Iterable[str] = ALL_SCOPES, *, name: str = "tests") -> str:
    """A service account's access token with `scopes`."""
    issued = _TOKENS.issue_service(client_id=name, scopes=frozenset(scopes), now=datetime.now(UTC))
    return issued.token


def service_bearer(scopes: Iterable[str] = ALL_SCOPES, *, name: str = "tests") -> str:
    """`authorization` metadata of a service account with `scopes`."""
    return f"Bearer {service_token(scopes, name=name)}"


def user_bearer(
    user_id: str,
    *,
    role: str = "user",
    now: datetime | None = None,
    key: Ed25519PrivateKey | None = None,
) -> str:
    """`authorization` of a user's token for a new session (not stored anywhere: for the
    checks that come before the session's)."""
    now = now or datetime.now(UTC)
    issued = issuer(key).issue(
        user_id=uuid.UUID(user_id),
        session_id=uuid.uuid4(),
        role=role,
        now=now,
        ends=now + timedelta(days=1),
    )
    return f"Bearer {issued.token}"


def subject_of(authorization: str | None) -> str:
    """The subject of a bearer token, unverified: for stand-ins behind a verifier."""
    if not authorization:
        raise errors.Unauthenticated("no token", reason="CREDENTIALS_MISSING")
    claims = jwt.decode(authorization.partition(" ")[2], options={"verify_signature": False})
    return str(claims["sub"])
