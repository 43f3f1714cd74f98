"""Who is calling: an access token verified with the users service's keys, of a live session.

The users service issues and signs the tokens; the gateway holds no secret. It checks a
token's signature and claims with the published keys (`servicekit.tokens`: cached, and
fetched again when a token names an unknown key), then that the token's session has not
ended: the users service is asked (coalesced: `gateway.readers.SessionReader`) and a
live answer is remembered for `GATEWAY_AUTH_CACHE_SECONDS` (`SessionCache`). A logout,
password change or deletion through this gateway forgets the sessions it ended at once;
a session ended elsewhere stops working here within that many seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf.json_format import MessageToDict

from gateway.settings import GatewaySettings
from gateway.upstreams import Upstream, UsersAuthStub
from servicekit.tokens import JwksSource, KeySet, TokenVerifier
from tandem_protos.users.v1 import auth_pb2


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller of a request: its account, session and role, and its credential."""

    user_id: str
    session_id: str
    role: str
    # Forwarded to the users service, which decides what this caller may see.
    authorization: str


def jwks_source(upstream: Upstream[UsersAuthStub]) -> JwksSource:
    async def fetch() -> Mapping[str, Any]:
        reply = await upstream.call(
            upstream.stub.GetJsonWebKeySet, auth_pb2.GetJsonWebKeySetRequest()
        )
        return jwks_document(reply)

    return fetch


def jwks_document(reply: auth_pb2.JsonWebKeySet) -> dict[str, Any]:
    """The key set as RFC 7517 JSON: field names as in the proto."""
    return MessageToDict(reply, preserving_proto_field_name=True)


def token_verifier(settings: GatewaySettings, upstream: Upstream[UsersAuthStub]) -> TokenVerifier:
    keys = KeySet(
        jwks_source(upstream),
        max_age_seconds=settings.jwks_max_age_seconds,
        min_refetch_seconds=settings.jwks_min_refetch_seconds,
    )
    return TokenVerifier(
        keys,
        issuer=settings.token_issuer,
        audience=settings.token_audience,
        max_lifetime_seconds=settings.token_max_lifetime_seconds,
    )


class SessionCache:
    """Session ids recently seen live, each for `ttl` seconds; ttl 0 remembers nothing."""

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
        # session id -> (user id, live until)
        self._live_until: dict[str, tuple[str, float]] = {}

    def is_live(self, session_id: str) -> bool:
        entry = self._live_until.get(session_id)
        if entry is None:
            return False
        if entry[1] <= self._clock():
            del self._live_until[session_id]
            return False
        return True

    def mark_live(self, session_id: str, user_id: str) -> None:
        if self._ttl <= 0:
            return
        if len(self._live_until) >= self._max_entries:
            self._prune()
        self._live_until[session_id] = (user_id, self._clock() + self._ttl)

    def forget(self, session_id: str) -> None:
        self._live_until.pop(session_id, None)

    def forget_user(self, user_id: str, *, keep: str | None = None) -> None:
        """Forget every session of an account (but `keep`): they have just ended."""
        ended = [s for s, (u, _) in self._live_until.items() if u == user_id and s != keep]
        for session_id in ended:
            del self._live_until[session_id]

    def _prune(self) -> None:
        now = self._clock()
        for session_id in [s for s, (_, until) in self._live_until.items() if until <= now]:
            del self._live_until[session_id]
        # Still full of fresh entries: drop the oldest half (dicts keep insertion order).
        if len(self._live_until) >= self._max_entries:
            for session_id in list(self._live_until)[: self._max_entries // 2]:
                del self._live_until[session_id]
