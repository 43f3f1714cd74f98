"""Which client an HTTP request comes from: the address the users service's login and
sign-up limits count, sent to it as `x-tandem-client-address` metadata.

The peer of the connection, unless that peer is one of `GATEWAY_TRUSTED_PROXIES` (CIDR
ranges, none by default): then `X-Forwarded-For` is read from the right - each trusted
proxy appends the address it was reached from - and the client is the first hop that
is not a trusted proxy. Hops further left were written by whoever sent the request, so
they are never believed; with no trusted proxy configured, the header is ignored. (The
raw peer is what uvicorn saw: gateway.server turns off uvicorn's own proxy headers.)
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Annotated

from fastapi import Depends, Request

from gateway.deps import runtime_of
from gateway.settings import ProxyNetwork
from tandem_client import CLIENT_ADDRESS_KEY

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Metadata = tuple[tuple[str, str], ...]


def client_address(request: Request, trusted_proxies: Sequence[ProxyNetwork]) -> str | None:
    """The client's IP address as text; None when the request has no peer."""
    if request.client is None:
        return None
    peer = request.client.host
    if not trusted_peer(peer, trusted_proxies):
        return peer
    nearest = peer
    for hop in reversed(_forwarded_hops(request)):
        address = _parse(hop)
        if address is None:
            # Not what a proxy writes: the chain is broken here, so the nearest hop
            # that can be believed is the client.
            return nearest
        if not _trusted(address, trusted_proxies):
            return str(address)
        nearest = str(address)
    return nearest


def trusted_peer(peer: str | None, trusted_proxies: Sequence[ProxyNetwork]) -> bool:
    """Whether the connection's peer is one of the trusted proxies."""
    return peer is not None and _trusted(_parse(peer), trusted_proxies)


async def client_metadata(request: Request) -> Metadata:
    """The metadata that names the request's client to the users service."""
    address = client_address(request, runtime_of(request).settings.trusted_proxies)
    return () if address is None else ((CLIENT_ADDRESS_KEY, address),)


ClientMetadata = Annotated[Metadata, Depends(client_metadata)]


def _forwarded_hops(request: Request) -> list[str]:
    # Several X-Forwarded-For lines are one list, in order (RFC 9110 §5.3).
    return [
        hop.strip()
        for line in request.headers.getlist("x-forwarded-for")
        for hop in line.split(",")
        if hop.strip()
    ]


def _parse(text: str) -> Address | None:
    """An address as proxies write it: bare, `a.b.c.d:port` or `[v6]:port`."""
    for candidate in (text, text.rsplit(":", 1)[0].strip("[]") if ":" in text else None):
        if candidate is None:
            continue
        try:
            address = ipaddress.ip_address(candidate)
        except ValueError:
            continue
        # A dual-stack socket shows IPv4 clients as ::ffff:a.b.c.d.
        mapped = address.ipv4_mapped if isinstance(address, ipaddress.IPv6Address) else None
        return mapped or address
    return None


def _trusted(address: Address | None, trusted_proxies: Sequence[ProxyNetwork]) -> bool:
    return address is not None and any(address in network for network in trusted_proxies)
