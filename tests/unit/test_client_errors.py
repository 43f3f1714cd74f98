"""tandem_client.errors: the exception a failed call raises, from the trailers servers send."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from servicekit import errors as server_errors
from tandem_client import errors
from tandem_client.errors import FieldViolation, from_rpc_error


def _pack(message: Message) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def aio_error(
    code: grpc.StatusCode, message: str, *trailers: tuple[str, str | bytes]
) -> grpc.aio.AioRpcError:
    """An error as grpc.aio raises it, with these trailers."""
    return grpc.aio.AioRpcError(
        code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailers), message, None
    )


def details(status: status_pb2.Status) -> tuple[str, bytes]:
    return (errors.DETAILS_METADATA_KEY, status.SerializeToString())


def test_error_info_gives_the_reason_and_metadata() -> None:
    status = status_pb2.Status(
        code=grpc.StatusCode.NOT_FOUND.value[0],
        message="user 42 not found",
        details=[
            _pack(
                error_details_pb2.ErrorInfo(
                    reason="USER_NOT_FOUND", domain="tandem", metadata={"id": "42"}
                )
            )
        ],
    )
    error = from_rpc_error(
        aio_error(
            grpc.StatusCode.NOT_FOUND,
            "user 42 not found",
            ("x-request-id", "req-1"),
            details(status),
        )
    )
    assert type(error) is errors.NotFound
    assert error.code is grpc.StatusCode.NOT_FOUND
    assert error.message == "user 42 not found"
    assert error.reason == "USER_NOT_FOUND"
    assert dict(error.metadata) == {"id": "42"}
    assert error.violations == ()
    assert error.retry_after is None
    assert error.request_id == "req-1"
    assert isinstance(error.cause, grpc.aio.AioRpcError)
    assert str(error) == "NOT_FOUND: user 42 not found (reason USER_NOT_FOUND)"
    assert "\n" not in repr(error)


def test_bad_request_gives_the_violations() -> None:
    violations = [
        server_errors.FieldViolation("user.email", "must be a valid email address"),
        server_errors.FieldViolation("password", "must be at least 8 characters"),
    ]
    status = server_errors.InvalidArgument(violations).to_rpc_status()
    error = from_rpc_error(
        aio_error(grpc.StatusCode.INVALID_ARGUMENT, status.message, details(status))
    )
    assert type(error) is errors.InvalidArgument
    assert error.violations == (
        FieldViolation("user.email", "must be a valid email address"),
        FieldViolation("password", "must be at least 8 characters"),
    )
    assert error.reason is None
    assert str(error).startswith("INVALID_ARGUMENT: user.email: must be a valid email")


def test_retry_info_gives_retry_after_and_wins_over_the_trailer() -> None:
    exc = server_errors.ResourceExhausted("slow down", retry_after=2.5, reason="RATE_LIMITED")
    status = exc.to_rpc_status()
    error = from_rpc_error(
        aio_error(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "slow down",
            *exc.trailing_metadata(),  # retry-after: 3
            details(status),
        )
    )
    assert type(error) is errors.ResourceExhausted
    assert error.retry_after == 2.5
    assert error.reason == "RATE_LIMITED"


def test_a_retry_after_trailer_alone_is_read() -> None:
    error = from_rpc_error(aio_error(grpc.StatusCode.UNAVAILABLE, "down", ("retry-after", "7")))
    assert type(error) is errors.Unavailable
    assert error.retry_after == 7.0
    assert error.reason is None
    assert str(error) == "UNAVAILABLE: down"


def test_retry_info_of_zero_seconds_is_kept() -> None:
    status = status_pb2.Status(
        code=grpc.StatusCode.UNAVAILABLE.value[0],
        message="m",
        details=[_pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration()))],
    )
    error = from_rpc_error(aio_error(grpc.StatusCode.UNAVAILABLE, "m", details(status)))
    assert error.retry_after == 0.0


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, errors.InvalidArgument),
        (grpc.StatusCode.OUT_OF_RANGE, errors.InvalidArgument),
        (grpc.StatusCode.NOT_FOUND, errors.NotFound),
        (grpc.StatusCode.ALREADY_EXISTS, errors.AlreadyExists),
        (grpc.StatusCode.FAILED_PRECONDITION, errors.FailedPrecondition),
        (grpc.StatusCode.ABORTED, errors.Aborted),
        (grpc.StatusCode.UNAUTHENTICATED, errors.Unauthenticated),
        (grpc.StatusCode.PERMISSION_DENIED, errors.PermissionDenied),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, errors.ResourceExhausted),
        (grpc.StatusCode.UNAVAILABLE, errors.Unavailable),
        (grpc.StatusCode.DEADLINE_EXCEEDED, errors.DeadlineExceeded),
        (grpc.StatusCode.CANCELLED, errors.Cancelled),
        (grpc.StatusCode.UNIMPLEMENTED, errors.Unimplemented),
        (grpc.StatusCode.INTERNAL, errors.Internal),
        (grpc.StatusCode.UNKNOWN, errors.Internal),
        (grpc.StatusCode.DATA_LOSS, errors.Internal),
    ],
)
def test_every_status_has_its_class(code: grpc.StatusCode, cls: type[errors.RpcError]) -> None:
    error = from_rpc_error(aio_error(code, "m"))
    assert type(error) is cls
    assert isinstance(error, errors.RpcError)
    assert error.code is code
    assert code in cls.codes


def test_every_error_status_is_covered() -> None:
    assert set(errors.ERROR_CLASS_BY_CODE) == set(grpc.StatusCode) - {grpc.StatusCode.OK}


def test_details_that_do_not_parse_are_ignored() -> None:
    error = from_rpc_error(
        aio_error(
            grpc.StatusCode.INTERNAL,
            "boom",
            (errors.DETAILS_METADATA_KEY, b"\xff\xfe not a protobuf"),
        )
    )
    assert type(error) is errors.Internal
    assert (error.reason, error.violations, error.message) == (None, (), "boom")


def test_details_of_another_status_are_ignored() -> None:
    # A proxy passed along the details of some other call's failure.
    status = server_errors.NotFound("gone", reason="USER_NOT_FOUND").to_rpc_status()
    error = from_rpc_error(aio_error(grpc.StatusCode.UNAVAILABLE, "no route", details(status)))
    assert type(error) is errors.Unavailable
    assert error.reason is None
    assert error.status is None
    assert (
        errors.rich_status(aio_error(grpc.StatusCode.NOT_FOUND, "gone", details(status))) == status
    )


def test_foreign_detail_messages_are_ignored() -> None:
    # A Status whose details are messages this client does not know.
    foreign = any_pb2.Any(type_url="type.example.com/acme.Thing", value=b"\x08\x01")
    status = status_pb2.Status(code=grpc.StatusCode.ABORTED.value[0], details=[foreign])
    error = from_rpc_error(aio_error(grpc.StatusCode.ABORTED, "conflict", details(status)))
    assert type(error) is errors.Aborted
    assert (error.reason, error.violations, error.retry_after) == (None, (), None)


def test_an_error_without_trailers_or_message() -> None:
    error = from_rpc_error(
        grpc.aio.AioRpcError(grpc.StatusCode.CANCELLED, grpc.aio.Metadata(), None, None, None)  # type: ignore[arg-type]
    )
    assert type(error) is errors.Cancelled
    assert str(error) == "CANCELLED"
    assert error.request_id is None


@pytest.mark.parametrize("value", ["soon", "-1", "inf", "nan"])
def test_a_retry_after_trailer_that_is_no_number_of_seconds_is_ignored(value: str) -> None:
    error = from_rpc_error(aio_error(grpc.StatusCode.UNAVAILABLE, "down", ("retry-after", value)))
    assert error.retry_after is None


def test_the_server_side_violation_is_the_clients() -> None:
    status = server_errors.InvalidArgument.field("id", "not a UUID").to_rpc_status()
    error = from_rpc_error(
        aio_error(grpc.StatusCode.INVALID_ARGUMENT, status.message, details(status))
    )
    assert error.status == status
    assert error.violations == (FieldViolation("id", "not a UUID"),)
    assert server_errors.FieldViolation is FieldViolation
