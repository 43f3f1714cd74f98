"""Who is calling: an access token verified with the users service's keys, of a live session.

The users service issues and signs the tokens; the gateway holds no secret. It checks a
token's signature and claims with the published keys (`servicekit.tokens`: cached, and
fetched again when a token names an unknown key), then that the token's session has not
ended: the users service is asked (coalesced: `gateway.readers.SessionReader`) and a
live answer is remembered for `GATEWAY_AUTH_CACHE_SECONDS` (`servicekit.liveness`). A logout,
password change or deletion through this gateway forgets the sessions it ended at once;
a session ended elsewhere stops working here within that many seconds.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from gateway.settings import GatewaySettings
from gateway.upstreams import Upstream, UsersAuthStub
from servicekit.callers import jwks_document, remote_verifier
from servicekit.tokens import JwksSource, TokenVerifier
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
            upstream.stub.GetJsonWebKeySet, auth_pb2.GetJsonWebKeySetRequest(), authorization=""
        )
        return jwks_document(reply)

    return fetch


def token_verifier(settings: GatewaySettings, upstream: Upstream[UsersAuthStub]) -> TokenVerifier:
    return remote_verifier(jwks_source(upstream), settings)
