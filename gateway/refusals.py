"""The users service's login and sign-up refusals, kept at the gateway until they run out.

When the users service refuses a login or a sign-up for its limits (429: RESOURCE_EXHAUSTED
with RetryInfo, and ErrorInfo metadata `scope`; users_service.throttling), the gateway
remembers the refusal for that client until the RetryInfo runs out: for every attempt of
the client's address (`scope` = `address`), or for the same account from that address
(`account_address`). A retry within that time is refused here, 429 with the same reason
and the remaining `Retry-After`, without a call: a client hammering a refusal then costs
the gateway its own answer only, not a round trip and the users service's work too. The
users service stays the one that decides; the gateway only keeps to the time it gave.
(So with several gateway replicas, each learns a refusal from its own first call.)

A client that retries before its `Retry-After` has passed (no well-behaved one does) is
held back `GATEWAY_EARLY_RETRY_DELAY_SECONDS` first (1 s by default; a random 50-100 % of
it, so that retries held back together are not let go together; 0 answers at once), and
then decided as if it had been sent then: refused with the time left, or, if the refusal
has run out meanwhile, passed on to the users service. A closed loop of early retries
then costs about one answer per connection and second, instead of as many as the client
can send. While it waits, the request does not count against `GATEWAY_MAX_IN_FLIGHT`
(gateway.middleware.InFlight), so such clients cannot use up the cap; the connection cap
still bounds them.

At most `MAX_ENTRIES` refusals are kept (about 200 bytes each); past that, the oldest are
forgotten first (a tenth at once), which only costs one more call to the users service
for each.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable, MutableMapping
from typing import Any

import grpc

from gateway.edge import IN_FLIGHT
from gateway.upstream_errors import UpstreamError
from servicekit.errors import retry_seconds
from tandem_client import CLIENT_ADDRESS_KEY

Metadata = tuple[tuple[str, str], ...]

MAX_ENTRIES = 50_000
# The actions refusals are kept for.
LOG_IN = "login"
SIGN_UP = "signup"
# The ErrorInfo metadata naming what a refusal holds for (users_service.throttling).
SCOPE = "scope"
ADDRESS = "address"
ACCOUNT_ADDRESS = "account_address"

_Key = tuple[str, ...]


class Refusals:
    """Refusals of the users service, per (action, address[, account]), until they run out."""

    def __init__(
        self,
        *,
        early_retry_delay: float,
        max_entries: int = MAX_ENTRIES,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._delay = early_retry_delay
        self._max_entries = max_entries
        self._clock = clock
        # key -> (when it runs out, reason)
        self._until: dict[_Key, tuple[float, str | None]] = {}

    def __len__(self) -> int:
        return len(self._until)

    def held(self, action: str, address: str | None, account: str = "") -> UpstreamError | None:
        """The 429 a client's attempt gets here, if a refusal for it still runs."""
        if address is None or not self._until:
            return None
        now = self._clock()
        for key in ((action, address), (action, address, account)):
            found = self._until.get(key)
            if found is None:
                continue
            until, reason = found
            if until <= now:
                del self._until[key]
                continue
            seconds = retry_seconds(until - now)
            return UpstreamError(
                429,
                f"too many attempts from this client; retry in {seconds} s",
                grpc_code=grpc.StatusCode.RESOURCE_EXHAUSTED,
                reason=reason,
                headers={"Retry-After": str(seconds)},
                retry_after=until - now,
            )
        return None

    def remember(
        self, action: str, address: str | None, account: str, error: UpstreamError
    ) -> None:
        """Keep `error` if it is a refusal with a scope and a time to wait."""
        scope = error.metadata.get(SCOPE)
        if (
            address is None
            or error.grpc_code != grpc.StatusCode.RESOURCE_EXHAUSTED
            or not error.retry_after
            or scope not in (ADDRESS, ACCOUNT_ADDRESS)
        ):
            return
        key = (action, address) if scope == ADDRESS else (action, address, account)
        self._until.pop(key, None)  # re-inserted last: the oldest are forgotten first
        self._until[key] = (self._clock() + error.retry_after, error.reason)
        if len(self._until) > self._max_entries:
            self._forget_oldest()

    async def check(
        self, action: str, client: Metadata, account: str, scope: MutableMapping[str, Any]
    ) -> None:
        """Raise the 429 a client's attempt gets here, if a refusal for it still runs,
        once the early retry's delay has passed (see the module's docstring)."""
        address = address_in(client)
        refusal = self.held(action, address, account)
        if refusal is None:
            return
        if self._delay > 0:
            counted = scope.get(IN_FLIGHT)
            if counted is not None:
                counted.leave()
            # 50-100 % of the delay: retries held back together are not let go together.
            await asyncio.sleep(self._delay * (0.5 + random.random() / 2))  # noqa: S311
            if counted is not None:
                counted.rejoin()
            # Decided as if sent now: the refusal may have run out meanwhile.
            refusal = self.held(action, address, account)
            if refusal is None:
                return
        raise refusal

    def remember_for(
        self, action: str, client: Metadata, account: str, error: UpstreamError
    ) -> None:
        self.remember(action, address_in(client), account, error)

    def _forget_oldest(self) -> None:
        # A tenth at once, so that a full memory is not trimmed on every refusal.
        keep = self._max_entries - max(1, self._max_entries // 10)
        while len(self._until) > keep:
            del self._until[next(iter(self._until))]


def address_in(client: Metadata) -> str | None:
    """The client's address in the metadata gateway.client_address made."""
    for key, value in client:
        if key == CLIENT_ADDRESS_KEY:
            return value
    return None


def account_of(username: str | None) -> str:
    """The account part of a key: the login's email as the users service would match it
    (near enough: a spelling it normalises otherwise only costs one more call)."""
    return (username or "").strip().lower()
