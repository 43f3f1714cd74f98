"""The `Idempotency-Key` header (the IETF httpapi draft, as Stripe has it) of the routes
that create, and the one retry it makes safe.

- **The header**: 1 to 255 printable ASCII characters, bare (`Idempotency-Key: 5f1c…`,
  as Stripe's clients send it) or as a structured-field string (`"5f1c…"`, as the
  draft writes it); anything else is 400.
- **The request id**: the gRPC write carries the key as its `request_id` (AIP-155
  wants a UUID): the key's UUIDv5 in a namespace of Tandem's own, the same for the same
  key. Without the header a request gets a random one, so the retry below is safe for
  it too. The services scope ids by their caller: an analysis's is the user's (the
  gateway forwards the user's token); a sign-up's is the gateway's own service account,
  so every anonymous client shares one space of sign-up keys: use random keys.
- **The retry**: a write whose connection broke before its answer came (UNAVAILABLE
  from the transport, without a status of the service's) goes once more, with the same
  request id, within what is left of its deadline. It then answers what the first
  attempt did if that was committed (the replica died after its commit), or makes the
  write if not. A refusal of the service itself (its database is down, it is
  overloaded) is answered as it is: retrying at once would not help.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Sequence
from typing import Annotated, Any, TypeVar

import grpc
from fastapi import Header

from gateway.problems import ProblemError
from gateway.upstream_errors import UpstreamError
from gateway.upstreams import Upstream

log = logging.getLogger(__name__)

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255
# Where keys' request ids live: uuid5(KEY_NAMESPACE, key). Fixed for ever, or keys sent
# before a change would no longer find their first request.
KEY_NAMESPACE = uuid.UUID("7d3c2f4e-9b1a-5e8c-a6d0-3f2b8c1e4a97")
# Less time than this left is not worth a second attempt.
MIN_RETRY_SECONDS = 0.1

Req = TypeVar("Req")
Resp = TypeVar("Resp")

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias=HEADER,
        description=(
            "Makes the request safe to retry: for 24 hours, a retry with the same key and "
            "the same body answers 201 with what the first request created, and creates "
            "nothing. The same key with another body is 422; while the first request with "
            "the key still runs, 409. 1 to 255 printable ASCII characters, bare or as a "
            "structured-field string; use a random UUID for each new request."
        ),
        examples=["8e03978e-40d5-43e8-bc93-6894a57f9324"],
    ),
]


def request_id_for(key: str | None) -> str:
    """The `request_id` of a write sent with the header `key` (None: without one)."""
    if key is None:
        return str(uuid.uuid4())
    return str(uuid.uuid5(KEY_NAMESPACE, parse_key(key)))


def parse_key(raw: str) -> str:
    """The key a header value names; 400 when it names none."""
    value = raw.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        value = _sf_string(value[1:-1])
    if not 1 <= len(value) <= MAX_KEY_LENGTH:
        raise _bad_key(f"must be 1 to {MAX_KEY_LENGTH} characters")
    if not all(" " <= ch <= "~" for ch in value):
        raise _bad_key("must be printable ASCII characters")
    return value


async def call_keyed(
    upstream: Upstream[Any],
    method: grpc.aio.UnaryUnaryMultiCallable[Req, Resp],
    request: Req,
    *,
    deadline: float | None = None,
    authorization: str | None = None,
    metadata: Sequence[tuple[str, str]] = (),
) -> Resp:
    """Make a write that carries a `request_id`, as `Upstream.call` makes a call, once
    more if its connection broke before its answer came."""
    budget = upstream.deadline if deadline is None else deadline
    started = time.monotonic()
    try:
        return await upstream.call(
            method, request, deadline=budget, authorization=authorization, metadata=metadata
        )
    except UpstreamError as error:
        left = budget - (time.monotonic() - started)
        if not _lost_in_transit(error) or left < MIN_RETRY_SECONDS:
            raise
        log.info(
            "the %s service's answer was lost (%s); sending the write once more with its "
            "request id",
            upstream.name,
            error.detail,
        )
    return await upstream.call(
        method, request, deadline=left, authorization=authorization, metadata=metadata
    )


def _lost_in_transit(error: UpstreamError) -> bool:
    # Our services' own UNAVAILABLE always carries an ErrorInfo reason; grpc's, for a
    # connection that broke or was refused, carries none.
    return error.grpc_code == grpc.StatusCode.UNAVAILABLE and error.reason is None


def _sf_string(quoted: str) -> str:
    """The content of a structured-field string (RFC 8941 §3.3.3): `\\"` and `\\\\` are
    its only escapes, and a bare `"` ends it."""
    out: list[str] = []
    escaped = False
    for ch in quoted:
        if escaped:
            if ch not in '"\\':
                raise _bad_key('has an escape other than \\" or \\\\')
            out.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == '"':
            raise _bad_key("has a quote inside its string")
        else:
            out.append(ch)
    if escaped:
        raise _bad_key("ends in an escape")
    return "".join(out)


def _bad_key(message: str) -> ProblemError:
    field = HEADER.lower()
    return ProblemError(400, f"{field}: {message}", errors=[(field, message)])
