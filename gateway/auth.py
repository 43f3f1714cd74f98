"""Who is calling: an access token verified with the users service's keys, of a live session.

The users service issues and signs the tokens; the gateway signs nothing. It checks a
token's signature and claims with the published keys (`servicekit.tokens`: cached, and
fetched again when a token names an unknown key), then that the token's session has not
ended: the users service is asked (coalesced: `gateway.readers.SessionReader`) and a
live answer is remembered for `GATEWAY_AUTH_CACHE_SECONDS` (`servicekit.liveness`). A logout,
password change or deletion through this gateway forgets the sessions it ended at once;
a session ended elsewhere stops working here within that many seconds.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.settings import GatewaySettings
from gateway.upstreams import Upstream, UsersAuthStub
from servicekit.callers import jwks_source, remote_verifier
from servicekit.tokens import TokenVerifier


@dataclass(frozen=True, slots=True)
class Principal:
    """The caller of a request: its account, session and role, and its credential."""

    user_id: str
    session_id: str
    role: str
    # Forwarded to the users service, which decides what this caller may see.
    authorization: str


def token_verifier(settings: GatewaySettings, upstream: Upstream[UsersAuthStub]) -> TokenVerifier:
    return remote_verifier(jwks_source(upstream.connection), settings)
