from __future__ import annotations

import grpc
import pytest
from google.rpc import error_details_pb2

from servicekit import errors
from tandem_client import errors as client_errors


def test_invalid_argument_carries_bad_request_violations() -> None:
    error = errors.InvalidArgument(
        [
            errors.FieldViolation("user.email", "not an email address"),
            errors.FieldViolation("password", "at least 8 characters"),
        ]
    )
    status = error.to_rpc_status()
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert status.message == "user.email: not an email address; password: at least 8 characters"
    assert client_errors.field_violations(status) == error.violations


def test_invalid_argument_needs_a_violation() -> None:
    with pytest.raises(ValueError, match="at least one"):
        errors.InvalidArgument([])


def test_other_errors_carry_error_info() -> None:
    status = errors.NotFound(
        "no user abc", reason="USER_NOT_FOUND", metadata={"id": "abc"}
    ).to_rpc_status()
    assert status.code == grpc.StatusCode.NOT_FOUND.value[0]
    info = error_details_pb2.ErrorInfo()
    assert status.details[0].Unpack(info)
    assert (info.reason, info.domain, dict(info.metadata)) == (
        "USER_NOT_FOUND",
        "tandem",
        {"id": "abc"},
    )


def test_retryable_errors_carry_retry_info_and_retry_after() -> None:
    error = errors.ResourceExhausted("slow down", retry_after=2.5)
    status = error.to_rpc_status()
    retry = error_details_pb2.RetryInfo()
    assert status.details[1].Unpack(retry)
    assert (retry.retry_delay.seconds, retry.retry_delay.nanos) == (2, 500_000_000)
    assert error.trailing_metadata() == (("retry-after", "3"),)
    assert errors.Unavailable("down").trailing_metadata() == ()


@pytest.mark.parametrize(
    ("delay", "told"), [(2.5, 3), (2.0, 2), (0.001, 1), (0.0, 0), (-0.4, 0), (-3.0, 0)]
)
def test_a_retry_delay_is_told_in_whole_seconds_never_early_never_negative(
    delay: float, told: int
) -> None:
    assert errors.retry_seconds(delay) == told
    assert errors.Unavailable("down", retry_after=delay).trailing_metadata() == (
        ("retry-after", str(told)),
    )


def test_no_status_has_no_violations() -> None:
    assert client_errors.field_violations(None) == ()
