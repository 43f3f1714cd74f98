"""Where a call's `authorization: Bearer <token>` comes from.

A `TokenProvider` is anything with `async def token() -> str`:

- `StaticToken(token)`: a token the caller already has (a user's access token, passed
  on by a service acting for that user);
- `ServiceAccount(client_id, client_secret, fetch=...)`: a service's own token, from
  the OAuth2 client-credentials grant (`users.v1.AuthService/IssueToken`); make one
  with `Connection.service_account(...)`, which fetches over that connection.

A ServiceAccount remembers its token and renews it before it expires: when less than a
fifth of its lifetime is left (at least 30 s, at most 5 minutes, and never more than
half of it), by the event loop's monotonic clock. One renewal runs at a time; every
caller that needs the token meanwhile awaits that one, shielded, so a caller that is
cancelled does not cancel it for the others. A renewal that fails while the current
token is still valid logs a warning and keeps that token (trying again a second
later); once the token has expired, the failure is raised to the caller.

Neither the secret nor a token is ever logged or shown in a `repr`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Protocol

from tandem_protos.users.v1 import auth_pb2

log = logging.getLogger("tandem_client.tokens")

IssueToken = Callable[[auth_pb2.IssueTokenRequest], Awaitable[auth_pb2.IssueTokenResponse]]

MIN_RENEWAL_MARGIN = 30.0
MAX_RENEWAL_MARGIN = 300.0
RETRY_SECONDS = 1.0


class TokenProvider(Protocol):
    """The source of a call's bearer token."""

    async def token(self) -> str:
        """The access token to send now."""
        ...


class StaticToken:
    """One token, used as it is (a user's access token)."""

    __slots__ = ("_token",)

    def __init__(self, token: str) -> None:
        self._token = token

    async def token(self) -> str:
        return self._token

    def __repr__(self) -> str:
        return "StaticToken(<redacted>)"


def renewal_margin(expires_in: float) -> float:
    """How long before its expiry a token of `expires_in` seconds is renewed."""
    margin = min(max(expires_in / 5, MIN_RENEWAL_MARGIN), MAX_RENEWAL_MARGIN)
    return min(margin, expires_in / 2)


class ServiceAccount:
    """A service account's access token, fetched with the client-credentials grant and
    renewed before it expires.

    `fetch` makes the IssueToken call (`Connection.service_account` passes its own);
    `clock` is the monotonic clock, the running loop's by default (tests pass a fake).
    """

    def __init__(
        self,
        client_id: str,
        client_secret: str,
        *,
        fetch: IssueToken,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.client_id = client_id
        self._client_secret = client_secret
        self._fetch = fetch
        self._clock = clock
        self._token: str | None = None
        self._expires_at = 0.0
        self._renew_at = 0.0
        self._pending: asyncio.Task[str] | None = None

    def __repr__(self) -> str:
        return f"ServiceAccount(client_id={self.client_id!r})"

    async def token(self) -> str:
        """The current token, renewed first when it is due (raises when none is valid)."""
        if self._token is not None and self._now() < self._renew_at:
            return self._token
        pending = self._pending
        if pending is None:
            pending = asyncio.get_running_loop().create_task(self._renew())
            pending.add_done_callback(_retrieve)
            self._pending = pending
        return await asyncio.shield(pending)

    def _now(self) -> float:
        return self._clock() if self._clock is not None else asyncio.get_running_loop().time()

    async def _renew(self) -> str:
        try:
            started = self._now()
            grant = auth_pb2.ClientCredentialsGrant(
                client_id=self.client_id, client_secret=self._client_secret
            )
            try:
                response = await self._fetch(auth_pb2.IssueTokenRequest(client_credentials=grant))
            except Exception as exc:
                now = self._now()
                if self._token is None or now >= self._expires_at:
                    raise
                log.warning(
                    "renewing the token of service account %s failed (%s); "
                    "the current one stays valid %.0f s more",
                    self.client_id,
                    exc,
                    self._expires_at - now,
                )
                self._renew_at = min(now + RETRY_SECONDS, self._expires_at)
                return self._token
            if not response.access_token or response.expires_in <= 0:
                raise ValueError(f"IssueToken gave service account {self.client_id} no token")
            self._token = str(response.access_token)
            self._expires_at = started + response.expires_in
            self._renew_at = self._expires_at - renewal_margin(response.expires_in)
            return self._token
        finally:
            self._pending = None


def _retrieve(task: asyncio.Task[str]) -> None:
    # Every caller may have been cancelled while the renewal ran: mark its exception
    # retrieved, so asyncio does not log it as lost (the next caller renews again).
    if not task.cancelled():
        task.exception()
