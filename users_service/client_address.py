"""Which client a call comes from, as users_service.throttling counts it.

The gRPC peer's address, unless the caller is a service that the policy lets take the
action for end users - the gateway, with `users.login` for logins and `users.signup` for
sign-ups - and it names the end client in `x-tandem-client-address` metadata. A service
trusted to check passwords for end users is trusted to say whose they are; the same
metadata from any other caller is ignored, so nobody else can choose the address their
attempts count against. (A trusted service that names no client has its own address
counted: every one of its users then shares the per-address limits.)

An address is kept as its IP; an IPv6 one as its /64, since one host holds a whole /64
and could otherwise try from as many addresses as it likes. A peer that is not an IP
(a Unix socket) is kept as gRPC names it.
"""

from __future__ import annotations

import ipaddress
from typing import Any
from urllib.parse import unquote

from tandem_client import CLIENT_ADDRESS_KEY
from users_service.policy import Action, Caller, allowed

_IPV6_HOST_BITS = 64


def client_address(context: Any, caller: Caller | None, action: Action) -> str:
    """The address of the client a call of `action` is for."""
    if caller is not None and caller.is_service and allowed(caller, action):
        named = _metadata(context, CLIENT_ADDRESS_KEY)
        if named is not None and (key := address_key(named)) is not None:
            return key
    return peer_address(context)


def peer_address(context: Any) -> str:
    """The address of whoever made the call (`ipv4:10.0.0.7:50123` -> `10.0.0.7`)."""
    peer = unquote(str(context.peer()))
    kind, _, rest = peer.partition(":")
    if kind in ("ipv4", "ipv6"):
        host = rest.rsplit(":", 1)[0].strip("[]")
        return address_key(host) or host
    return peer


def address_key(text: str) -> str | None:
    """How an IP address is counted; None for text that is not one."""
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        network = ipaddress.IPv6Network((address, _IPV6_HOST_BITS), strict=False)
        return str(network)
    return str(address)


def _metadata(context: Any, key: str) -> str | None:
    for name, value in context.invocation_metadata() or ():
        if name == key:
            return str(value)
    return None
