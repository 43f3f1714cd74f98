"""AIP-158 pagination: page sizes and opaque, signed page tokens for keyset cursors.

A token carries the cursor (the sort key of the last item served) and a fingerprint of
the request's other parameters, signed with HMAC-SHA256. A token that was altered, or
that comes back with different parameters, is INVALID_ARGUMENT instead of silently
serving the wrong page.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import secrets
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

from servicekit.errors import InvalidArgument
from servicekit.settings import ServiceSettings

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
_VERSION = 1
_MAC_BYTES = 16

Cursor = Sequence[str | int]


def page_size(requested: int, *, field: str = "page_size") -> int:
    """0 means the default; above the maximum is coerced to it; negative is invalid."""
    if requested < 0:
        raise InvalidArgument.field(field, "must not be negative")
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)


# The sort key of keyset pagination: (creation time, id), unique and stable.
TimeKey = tuple[datetime, uuid.UUID]


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    # Passed back as `page_token` for the next page; "" on the last one.
    next_page_token: str


async def keyset_page(
    tokens: PageTokens,
    *,
    size: int,
    token: str,
    scope: str,
    fetch: Callable[[TimeKey | None, int], Awaitable[list[T]]],
    key: Callable[[T], TimeKey],
) -> Page[T]:
    """One AIP-158 page: the items `fetch` returns after the token's key, and the
    token of the next page.

    `fetch(start, limit)` returns up to `limit` items past `start` in key order.
    """
    limit = page_size(size)
    start = None
    if token:
        cursor = tokens.decode(token, scope)
        start = (datetime.fromisoformat(str(cursor[0])), uuid.UUID(str(cursor[1])))
    # One extra row tells whether another page follows, without a COUNT.
    items = await fetch(start, limit + 1)
    if len(items) <= limit:
        return Page(items, "")
    items = items[:limit]
    time, ident = key(items[-1])
    return Page(items, tokens.encode([time.isoformat(), str(ident)], scope))


def page_tokens_from(settings: ServiceSettings) -> PageTokens:
    """PageTokens signed with the configured secret, or a random key (with a warning)."""
    if settings.page_token_secret is not None:
        return PageTokens(settings.page_token_secret.get_secret_value().encode())
    log.warning(
        "%s is not set: page tokens are signed with a random key and will not survive a "
        "restart or work across replicas",
        settings.variable("page_token_secret"),
    )
    return PageTokens(secrets.token_bytes(32))


class PageTokens:
    """Signs and checks page tokens with one secret (shared by all replicas)."""

    def __init__(self, secret: bytes) -> None:
        if len(secret) < 16:
            raise ValueError("a page-token secret needs at least 16 bytes")
        self._secret = secret

    def encode(self, cursor: Cursor, scope: str) -> str:
        """A token resuming after `cursor`, valid only for requests of `scope`."""
        payload = json.dumps(
            [_VERSION, _fingerprint(scope), list(cursor)], separators=(",", ":")
        ).encode()
        return _b64encode(payload + self._mac(payload))

    def decode(self, token: str, scope: str, *, field: str = "page_token") -> list[str | int]:
        """The cursor inside `token`; InvalidArgument if altered or out of scope."""
        try:
            raw = _b64decode(token)
        except (binascii.Error, ValueError):
            raise InvalidArgument.field(field, "is not a page token from this API") from None
        payload, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
        if len(raw) <= _MAC_BYTES or not hmac.compare_digest(mac, self._mac(payload)):
            raise InvalidArgument.field(field, "is not a page token from this API")
        version, fingerprint, cursor = json.loads(payload)
        if version != _VERSION:
            raise InvalidArgument.field(field, "has expired; list again from the start")
        if fingerprint != _fingerprint(scope):
            raise InvalidArgument.field(field, "was issued for a request with other parameters")
        return list(cursor)

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self._secret, payload, hashlib.sha256).digest()[:_MAC_BYTES]


def _fingerprint(scope: str) -> str:
    return hashlib.sha256(scope.encode()).hexdigest()[:16]


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(token: str) -> bytes:
    data = token.encode("ascii")
    return base64.urlsafe_b64decode(data + b"=" * (-len(data) % 4))
