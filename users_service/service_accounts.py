"""Service accounts: how a service proves who it is (OAuth2 client credentials).

`python -m users_service create-service-account NAME --scope ...` makes one and shows
its secret once; the service trades name and secret for a short-lived access token
(`IssueToken` with a client-credentials grant, RFC 6749 §4.4) whose `scope` claim says
what it may do (`users_service.policy.Scope`), and asks again before it expires.

The secret is 256 random bits, so it is stored as a SHA-256 hash, like refresh tokens:
a slow password hash would protect nothing more and would put every service's token
renewal in the queue of the password hasher. Replacing or deleting an account stops new
tokens at once; the tokens already issued live out their (short) lifetime.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime

from servicekit.errors import AlreadyExists, FieldViolation, InvalidArgument, Unauthenticated
from servicekit.throttle import Throttle
from users_service.domain import BAD_CREDENTIALS
from users_service.policy import Scope
from users_service.service_accounts_repository import ServiceAccountsRepository
from users_service.throttling import LoginRules, Throttling
from users_service.tokens import AccessTokens

# A recognisable prefix lets secret scanners find leaked client secrets.
CLIENT_SECRET_PREFIX = "tnds_"  # noqa: S105 - a prefix, not a secret
_NAME = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
_KNOWN_SCOPES = frozenset(scope.value for scope in Scope)
# Compared against when the account is unknown, so both refusals cost the same.
_NO_HASH = hashlib.sha256(b"no such service account").hexdigest()

BAD_CLIENT = "the client id or secret is incorrect"


@dataclass(frozen=True, slots=True)
class ServiceToken:
    access_token: str
    expires_in: int
    scopes: frozenset[str]


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class ServiceAccounts:
    def __init__(
        self,
        repository: ServiceAccountsRepository,
        tokens: AccessTokens | None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        throttling: Throttling | None = None,
    ) -> None:
        """`tokens`: None where none is issued (the command line that makes accounts);
        `throttling`: the limit on failed grants (the default, in this process, unless
        told)."""
        self._repository = repository
        self._tokens = tokens
        self._clock = clock
        self._throttling = throttling or Throttling(Throttle.in_process(), LoginRules())

    async def create(self, name: str, scopes: Iterable[str], *, replace: bool = False) -> str:
        """Make (or, with `replace`, remake) the account; its new secret."""
        granted = frozenset(scopes)
        violations = []
        if not _NAME.match(name):
            violations.append(
                FieldViolation(
                    "name", "must be 1-63 lowercase letters, digits or '-', starting with a letter"
                )
            )
        unknown = sorted(granted - _KNOWN_SCOPES)
        if unknown:
            known = ", ".join(sorted(_KNOWN_SCOPES))
            violations.append(
                FieldViolation("scope", f"unknown scope {', '.join(unknown)}; known: {known}")
            )
        if violations:
            raise InvalidArgument(violations)
        if not replace and await self._repository.get(name) is not None:
            raise AlreadyExists(
                f"a service account {name!r} exists", reason="SERVICE_ACCOUNT_EXISTS"
            )
        secret = CLIENT_SECRET_PREFIX + secrets.token_urlsafe(32)
        await self._repository.put(
            name, scopes=granted, secret_hash=secret_hash(secret), now=self._clock()
        )
        return secret

    async def delete(self, name: str) -> bool:
        return await self._repository.delete(name)

    async def holds(self, name: str, secret: str, scopes: Iterable[str]) -> bool:
        """Whether `secret` is the account's and it has exactly `scopes`."""
        account = await self._repository.get(name)
        return (
            account is not None
            and hmac.compare_digest(account.secret_hash, secret_hash(secret))
            and account.scopes == frozenset(scopes)
        )

    async def grant(self, client_id: str, client_secret: str, *, client: str = "") -> ServiceToken:
        """An access token for the account; UNAUTHENTICATED (BAD_CREDENTIALS) if not.
        `client`: the address failed grants count against (users_service.throttling)."""
        assert self._tokens is not None, "issuing tokens needs the signing keys"
        violations = []
        if not client_id:
            violations.append(FieldViolation("client_credentials.client_id", "is required"))
        if not client_secret:
            violations.append(FieldViolation("client_credentials.client_secret", "is required"))
        if violations:
            raise InvalidArgument(violations)
        attempt = await self._throttling.admit_client(client_id, client)
        account = await self._repository.get(client_id)
        expected = account.secret_hash if account is not None else _NO_HASH
        if not hmac.compare_digest(expected, secret_hash(client_secret)) or account is None:
            await attempt.failed()
            raise Unauthenticated(BAD_CLIENT, reason=BAD_CREDENTIALS)
        await attempt.succeeded()
        token = self._tokens.issue_service(
            client_id=account.name, scopes=account.scopes, now=self._clock()
        )
        return ServiceToken(token.token, token.expires_in, account.scopes)
