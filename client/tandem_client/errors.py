"""The errors a failed call raises: one class per gRPC status family, details decoded.

Every failed `Connection` call raises an `RpcError` (never a bare grpc error), whose
subclass names what went wrong and whose attributes carry what the server said:

    RpcError                 any status; the base to catch them all
    ├── InvalidArgument      INVALID_ARGUMENT, OUT_OF_RANGE   + `violations`
    ├── NotFound             NOT_FOUND
    ├── AlreadyExists        ALREADY_EXISTS
    ├── FailedPrecondition   FAILED_PRECONDITION
    ├── Aborted              ABORTED          (etag mismatch, lost race: read, retry)
    ├── Unauthenticated      UNAUTHENTICATED
    ├── PermissionDenied     PERMISSION_DENIED
    ├── ResourceExhausted    RESOURCE_EXHAUSTED               + `retry_after`
    ├── Unavailable          UNAVAILABLE                      + `retry_after`
    ├── DeadlineExceeded     DEADLINE_EXCEEDED
    ├── Cancelled            CANCELLED
    ├── Unimplemented        UNIMPLEMENTED
    └── Internal             INTERNAL, UNKNOWN, DATA_LOSS

Tandem's services pack a `google.rpc.Status` into the `grpc-status-details-bin`
trailer (AIP-193): an `ErrorInfo` whose `reason` is a stable UPPER_SNAKE identifier to
branch on, a `BadRequest` naming the invalid fields, a `RetryInfo`; grpcio-status's
`rpc_status.from_call` reads it. Details packed for another status, or bytes that are no
Status at all, are ignored, not raised.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, ClassVar, cast

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from tandem_client.context import REQUEST_ID_KEY

DETAILS_METADATA_KEY = "grpc-status-details-bin"
RETRY_AFTER_KEY = "retry-after"

_EMPTY: Mapping[str, str] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One invalid field: `field` is its path in the request (`user.email`)."""

    field: str
    description: str


class RpcError(Exception):
    """A failed call: its status, and what the server said about it.

    - `code`, `message`: the gRPC status and its message;
    - `reason`, `metadata`: the `google.rpc.ErrorInfo` reason (`USER_NOT_FOUND`) and
      its metadata, when the server sent one;
    - `violations`: the `google.rpc.BadRequest` field violations, if any;
    - `retry_after`: seconds to wait before retrying (`google.rpc.RetryInfo`, else a
      `retry-after` trailer), if the server said;
    - `request_id`: the `x-request-id` the server answered with, to quote in a report;
    - `status`: the whole `google.rpc.Status` the server packed, if any;
    - `cause`: the original `grpc.aio.AioRpcError`, for anything else.
    """

    codes: ClassVar[tuple[grpc.StatusCode, ...]] = ()

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
        violations: Iterable[FieldViolation] = (),
        retry_after: float | None = None,
        request_id: str | None = None,
        status: status_pb2.Status | None = None,
        cause: grpc.aio.AioRpcError | None = None,
    ) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.reason = reason
        self.metadata: Mapping[str, str] = MappingProxyType(dict(metadata)) if metadata else _EMPTY
        self.violations = tuple(violations)
        self.retry_after = retry_after
        self.request_id = request_id
        self.status = status
        self.cause = cause

    def __str__(self) -> str:
        text = f"{self.code.name}: {self.message}" if self.message else self.code.name
        return f"{text} (reason {self.reason})" if self.reason else text

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"


class InvalidArgument(RpcError):
    """The request itself is wrong; `violations` name the fields at fault."""

    codes = (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.OUT_OF_RANGE)


class NotFound(RpcError):
    codes = (grpc.StatusCode.NOT_FOUND,)


class AlreadyExists(RpcError):
    codes = (grpc.StatusCode.ALREADY_EXISTS,)


class FailedPrecondition(RpcError):
    codes = (grpc.StatusCode.FAILED_PRECONDITION,)


class Aborted(RpcError):
    """A concurrency conflict (a stale etag, a lost race): read again, then retry."""

    codes = (grpc.StatusCode.ABORTED,)


class Unauthenticated(RpcError):
    codes = (grpc.StatusCode.UNAUTHENTICATED,)


class PermissionDenied(RpcError):
    codes = (grpc.StatusCode.PERMISSION_DENIED,)


class ResourceExhausted(RpcError):
    """Too many calls or too much asked; retry after `retry_after` seconds when given."""

    codes = (grpc.StatusCode.RESOURCE_EXHAUSTED,)


class Unavailable(RpcError):
    """The service could not be reached or is overloaded; retrying later may work."""

    codes = (grpc.StatusCode.UNAVAILABLE,)


class DeadlineExceeded(RpcError):
    codes = (grpc.StatusCode.DEADLINE_EXCEEDED,)


class Cancelled(RpcError):
    codes = (grpc.StatusCode.CANCELLED,)


class Unimplemented(RpcError):
    """The server does not know the method (an older server, or the wrong target)."""

    codes = (grpc.StatusCode.UNIMPLEMENTED,)


class Internal(RpcError):
    """The server failed: a bug or lost data on its side; quote `request_id` to report it."""

    codes = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS)


ERROR_CLASS_BY_CODE: Mapping[grpc.StatusCode, type[RpcError]] = MappingProxyType(
    {
        code: cls
        for cls in (
            InvalidArgument,
            NotFound,
            AlreadyExists,
            FailedPrecondition,
            Aborted,
            Unauthenticated,
            PermissionDenied,
            ResourceExhausted,
            Unavailable,
            DeadlineExceeded,
            Cancelled,
            Unimplemented,
            Internal,
        )
        for code in cls.codes
    }
)


def from_rpc_error(error: grpc.aio.AioRpcError) -> RpcError:
    """The `RpcError` a failed grpc.aio call stands for, its details decoded."""
    code = error.code()
    trailers = tuple(_pairs(error.trailing_metadata()))
    status = rich_status(error)
    reason, metadata = _error_info(status)
    message = error.details() or ""
    return ERROR_CLASS_BY_CODE.get(code, RpcError)(
        code,
        message,
        reason=reason,
        metadata=metadata,
        violations=field_violations(status),
        retry_after=_retry_after(status, trailers),
        request_id=_text(trailers, REQUEST_ID_KEY),
        status=status,
        cause=error,
    )


def rich_status(error: grpc.aio.AioRpcError) -> status_pb2.Status | None:
    """The `google.rpc.Status` a server packed into a failed call's trailers, if any.

    grpcio-status's `rpc_status.from_call`, except that what does not fit is ignored
    rather than raised: bytes that do not parse, and a Status for another code or
    message, which some proxy passed along from elsewhere.
    """
    try:
        # AioRpcError has the code(), details() and trailing_metadata() it reads.
        status: status_pb2.Status | None = rpc_status.from_call(cast(grpc.Call, error))
    except (DecodeError, ValueError):
        return None
    return status


def field_violations(status: status_pb2.Status | None) -> tuple[FieldViolation, ...]:
    """The `google.rpc.BadRequest` field violations inside a status, if any."""
    found: list[FieldViolation] = []
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            if detail.Unpack(bad_request):
                found.extend(
                    FieldViolation(v.field, v.description) for v in bad_request.field_violations
                )
    return tuple(found)


def _error_info(status: status_pb2.Status | None) -> tuple[str | None, Mapping[str, str]]:
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                return info.reason or None, dict(info.metadata)
    return None, {}


def _retry_after(
    status: status_pb2.Status | None, trailers: Iterable[tuple[str, str | bytes]]
) -> float | None:
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry = error_details_pb2.RetryInfo()
            if detail.Unpack(retry) and retry.HasField("retry_delay"):
                delay = retry.retry_delay
                return max(0.0, float(delay.seconds + delay.nanos / 1e9))
    text = _text(trailers, RETRY_AFTER_KEY)
    if text is not None:
        try:
            seconds = float(text)
        except ValueError:
            return None  # an HTTP date, say: not ours
        if math.isfinite(seconds) and seconds >= 0:
            return seconds
    return None


def _text(trailers: Iterable[tuple[str, str | bytes]], key: str) -> str | None:
    for k, value in trailers:
        if k == key and isinstance(value, str):
            return value
    return None


def _pairs(metadata: Any) -> Iterable[tuple[str, str | bytes]]:
    # grpc.aio.Metadata iterates as (key, value) pairs; a hand-made error may hold None.
    return metadata or ()
