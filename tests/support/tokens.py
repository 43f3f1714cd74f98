"""Access tokens for tests, signed with the tests' key as the users service signs them.

A service token stands for an internal caller (`Caller.service_account`) with the
scopes a test needs: all of them by default, which is what a test of a service's
behaviour (not of its authorisation) wants. User tokens come from the real users
service (IssueToken), since their sessions must exist.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable
from datetime import UTC, datetime

from tests.support.keys import signing_key
from users_service.policy import Scope
from users_service.service_accounts import CLIENT_SECRET_PREFIX
from users_service.signing_keys import build_signing_keys
from users_service.tokens import AccessTokens

ALL_SCOPES = frozenset(scope.value for scope in Scope)
# The gateway's service account in every users database the tests migrate
# (tests.support.servers.migrate_users), and the secret the tests' gateways hold.
GATEWAY_CLIENT_ID = "gateway"
GATEWAY_SCOPES = frozenset({"users.signup", "users.login", "sessions.read"})
GATEWAY_SECRET = CLIENT_SECRET_PREFIX + secrets.token_urlsafe(32)

_TOKENS = AccessTokens(
    build_signing_keys(signing_key(), []),
    issuer="tandem-users",
    audience="tandem-api",
    ttl_seconds=900,
)


def service_token(scopes: Iterable[str] = ALL_SCOPES, *, name: str = "tests") -> str:
    """A service account's access token with `scopes`."""
    issued = _TOKENS.issue_service(client_id=name, scopes=frozenset(scopes), now=datetime.now(UTC))
    return issued.token


def service_bearer(scopes: Iterable[str] = ALL_SCOPES, *, name: str = "tests") -> str:
    """`authorization` metadata of a service account with `scopes`."""
    return f"Bearer {service_token(scopes, name=name)}"
