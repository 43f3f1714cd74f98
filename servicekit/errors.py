"""Domain errors, and how each becomes a gRPC status (the gateway maps it to HTTP).

Handlers raise these; the call interceptor turns them into a status with a human
message and `google.rpc` details. Anything else a handler raises is a bug and becomes
INTERNAL with a generic message.

    ServiceError
    ├── InvalidArgument      INVALID_ARGUMENT     + google.rpc.BadRequest (+ ErrorInfo
    │                                               when it has a reason of its own)
    ├── NotFound             NOT_FOUND
    ├── AlreadyExists        ALREADY_EXISTS
    ├── Aborted              ABORTED              (etag mismatch, lost race)
    ├── Unauthenticated      UNAUTHENTICATED
    ├── PermissionDenied     PERMISSION_DENIED
    ├── FailedPrecondition   FAILED_PRECONDITION
    ├── ResourceExhausted    RESOURCE_EXHAUSTED   + google.rpc.RetryInfo
    ├── Unavailable          UNAVAILABLE          + google.rpc.RetryInfo
    └── DeadlineExceeded     DEADLINE_EXCEEDED

Every other error carries a `google.rpc.ErrorInfo` whose `reason`
is a stable UPPER_SNAKE identifier that clients may branch on (AIP-193).

The client side of these statuses is tandem_client.errors (`rich_status`,
`field_violations`); `FieldViolation` is its class.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import ClassVar

import grpc
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from tandem_client import errors as client_errors

ERROR_DOMAIN = "tandem"


class StartupError(Exception):
    """A reason not to start that an operator can fix; shown as one line, no traceback."""


# One invalid field: `field` is its path in the request (`user.email`).
FieldViolation = client_errors.FieldViolation


class ServiceError(Exception):
    """Base of the errors a handler may raise on purpose."""

    code: ClassVar[grpc.StatusCode] = grpc.StatusCode.UNKNOWN
    default_reason: ClassVar[str] = "UNKNOWN"

    def __init__(
        self,
        message: str,
        *,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.reason = reason or self.default_reason
        self.metadata = dict(metadata or {})

    def details(self) -> list[any_pb2.Any]:
        """The `google.rpc` detail messages sent with the status."""
        info = error_details_pb2.ErrorInfo(
            reason=self.reason, domain=ERROR_DOMAIN, metadata=self.metadata
        )
        return [_pack(info)]

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        """Plain trailers sent with the status, besides the packed details."""
        return ()

    def to_rpc_status(self) -> status_pb2.Status:
        return status_pb2.Status(
            code=self.code.value[0], message=self.message, details=self.details()
        )


class InvalidArgument(ServiceError):
    """The request itself is wrong; `violations` name the fields at fault."""

    code = grpc.StatusCode.INVALID_ARGUMENT
    default_reason = "INVALID_ARGUMENT"

    def __init__(
        self,
        violations: Sequence[FieldViolation],
        message: str | None = None,
        *,
        reason: str | None = None,
    ) -> None:
        if not violations:
            raise ValueError("InvalidArgument needs at least one field violation")
        self.violations = tuple(violations)
        super().__init__(
            message or _join(v.field + ": " + v.description for v in violations), reason=reason
        )

    @classmethod
    def field(cls, field: str, description: str, *, reason: str | None = None) -> InvalidArgument:
        return cls([FieldViolation(field, description)], reason=reason)

    def details(self) -> list[any_pb2.Any]:
        bad_request = error_details_pb2.BadRequest(
            field_violations=[
                error_details_pb2.BadRequest.FieldViolation(
                    field=v.field, description=v.description
                )
                for v in self.violations
            ]
        )
        # A refusal clients branch on (WRONG_PASSWORD) carries its reason too.
        if self.reason == self.default_reason:
            return [_pack(bad_request)]
        return [_pack(bad_request), *super().details()]


class Violations:
    """Collects every problem of a request, so the caller learns them all at once."""

    def __init__(self) -> None:
        self._found: list[FieldViolation] = []

    def add(self, field: str, description: str) -> None:
        self._found.append(FieldViolation(field, description))

    def collect(self, error: InvalidArgument) -> None:
        """Keep the violations of a check that raised, and go on checking."""
        self._found.extend(error.violations)

    def check(self) -> None:
        if self._found:
            raise InvalidArgument(self._found)


def parse_id(raw: str, *, field: str = "id") -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise InvalidArgument.field(field, "must be a UUID") from None


class NotFound(ServiceError):
    code = grpc.StatusCode.NOT_FOUND
    default_reason = "NOT_FOUND"


class AlreadyExists(ServiceError):
    code = grpc.StatusCode.ALREADY_EXISTS
    default_reason = "ALREADY_EXISTS"


class Aborted(ServiceError):
    code = grpc.StatusCode.ABORTED
    default_reason = "ABORTED"


class Unauthenticated(ServiceError):
    code = grpc.StatusCode.UNAUTHENTICATED
    default_reason = "UNAUTHENTICATED"


class PermissionDenied(ServiceError):
    code = grpc.StatusCode.PERMISSION_DENIED
    default_reason = "PERMISSION_DENIED"


class FailedPrecondition(ServiceError):
    code = grpc.StatusCode.FAILED_PRECONDITION
    default_reason = "FAILED_PRECONDITION"


class _Retryable(ServiceError):
    """An error the client may retry, after `retry_after` seconds when given."""

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        reason: str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message, reason=reason, metadata=metadata)
        self.retry_after = retry_after

    def details(self) -> list[any_pb2.Any]:
        details = super().details()
        if self.retry_after is not None:
            seconds = max(0.0, self.retry_after)
            delay = duration_pb2.Duration(seconds=int(seconds), nanos=int((seconds % 1) * 1e9))
            details.append(_pack(error_details_pb2.RetryInfo(retry_delay=delay)))
        return details

    def trailing_metadata(self) -> tuple[tuple[str, str], ...]:
        if self.retry_after is None:
            return ()
        return (("retry-after", str(retry_seconds(self.retry_after))),)


class ResourceExhausted(_Retryable):
    code = grpc.StatusCode.RESOURCE_EXHAUSTED
    default_reason = "RESOURCE_EXHAUSTED"


class Unavailable(_Retryable):
    code = grpc.StatusCode.UNAVAILABLE
    default_reason = "UNAVAILABLE"


class DeadlineExceeded(ServiceError):
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    default_reason = "DEADLINE_EXCEEDED"


def retry_seconds(delay: float) -> int:
    """A retry delay as clients are told it (`Retry-After`, "retry in N s"): whole seconds,
    rounded up so that a client waiting that long is not early, and never below zero."""
    return max(0, math.ceil(delay))


def empty_text(raw: str) -> str:
    """What a text field that is empty once trimmed is told, in every service: absent
    (proto3's empty string) or only blanks."""
    return "must not be blank" if raw else "is required"


def _pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def _join(parts: Iterable[str]) -> str:
    return "; ".join(parts)
