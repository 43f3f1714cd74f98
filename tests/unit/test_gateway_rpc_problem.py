"""gateway.upstream_errors.rpc_problem: the HTTP problem of a failed call, from the RpcError
tandem_client raises."""

from __future__ import annotations

import grpc
import pytest
from google.protobuf import any_pb2, duration_pb2
from google.rpc import error_details_pb2, status_pb2

from gateway.problems import HTTP_STATUS_BY_GRPC_CODE
from gateway.upstream_errors import UpstreamError, rpc_problem
from servicekit import errors
from tandem_client import RpcError, from_rpc_error

DETAILS = "grpc-status-details-bin"


def failed(code: grpc.StatusCode, message: str, *trailers: tuple[str, str | bytes]) -> RpcError:
    """The RpcError a call ending with this status and these trailers raises."""
    cause = grpc.aio.AioRpcError(
        code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailers), message, None
    )
    return from_rpc_error(cause)


def raised(exc: errors.ServiceError) -> RpcError:
    """The RpcError of a call whose handler raised `exc` (as servicekit packs it)."""
    packed = (DETAILS, exc.to_rpc_status().SerializeToString())
    return failed(exc.code, exc.message, *exc.trailing_metadata(), packed)


def shape(problem: UpstreamError) -> tuple[object, ...]:
    return (problem.status, problem.detail, problem.grpc_code, problem.reason, problem.errors)


def pack(message: error_details_pb2.ErrorInfo | error_details_pb2.RetryInfo) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)
    return packed


def test_a_domain_error_keeps_its_message_reason_and_fields() -> None:
    not_found = rpc_problem(raised(errors.NotFound("no user u1", reason="USER_NOT_FOUND")), "users")
    assert shape(not_found) == (
        404,
        "no user u1",
        grpc.StatusCode.NOT_FOUND,
        "USER_NOT_FOUND",
        (),
    )
    assert not_found.headers == {}
    invalid = rpc_problem(raised(errors.InvalidArgument.field("user.email", "is bad")), "users")
    assert (invalid.status, invalid.reason) == (400, None)
    # Named as the REST API names the field.
    assert invalid.errors == (("email", "is bad"),)


@pytest.mark.parametrize(
    ("exc", "retry_after"),
    [
        (errors.ResourceExhausted("slow down", retry_after=7), "7"),
        (errors.ResourceExhausted("slow down", retry_after=2.5), "3"),
        (errors.Unavailable("the database is down", retry_after=0), "0"),
        (errors.Unavailable("the database is down"), None),
    ],
)
def test_retry_after_comes_from_the_trailer(exc: errors.ServiceError, retry_after: str) -> None:
    problem = rpc_problem(raised(exc), "ai")
    assert problem.headers.get("Retry-After") == retry_after
    assert problem.detail == exc.message


def test_retry_after_is_whole_seconds_and_only_for_retryable_statuses() -> None:
    assert (
        rpc_problem(failed(grpc.StatusCode.NOT_FOUND, "x", ("retry-after", "5")), "ai").headers
        == {}
    )
    fractional = failed(grpc.StatusCode.UNAVAILABLE, "x", ("retry-after", "1.5"))
    assert rpc_problem(fractional, "ai").headers == {"Retry-After": "2"}
    # A RetryInfo alone is as good as the trailer.
    retry = pack(error_details_pb2.RetryInfo(retry_delay=duration_pb2.Duration(seconds=4)))
    status = status_pb2.Status(code=14, message="down", details=[retry])
    only_info = failed(grpc.StatusCode.UNAVAILABLE, "down", (DETAILS, status.SerializeToString()))
    assert rpc_problem(only_info, "ai").headers == {"Retry-After": "4"}


@pytest.mark.parametrize(
    ("code", "status", "detail"),
    [
        (grpc.StatusCode.UNAVAILABLE, 503, "the users service is unavailable; retry shortly"),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 504, "the users service did not answer in time"),
        (grpc.StatusCode.UNIMPLEMENTED, 501, "the users service does not support this call"),
        (grpc.StatusCode.CANCELLED, 503, "the users service stopped before it answered"),
        (grpc.StatusCode.NOT_FOUND, 404, "the users service refused the call (NOT_FOUND)"),
        (grpc.StatusCode.INTERNAL, 500, "the users service failed unexpectedly; quote"),
        (grpc.StatusCode.UNKNOWN, 500, "the users service failed unexpectedly; quote"),
    ],
)
def test_bare_statuses_get_generic_details(code: grpc.StatusCode, status: int, detail: str) -> None:
    problem = rpc_problem(failed(code, "failed to connect to 10.0.0.7:50051"), "users")
    assert (problem.status, problem.grpc_code, problem.reason) == (status, code, None)
    assert problem.detail.startswith(detail)


def test_an_unexpected_fault_hides_even_a_rich_message() -> None:
    info = pack(error_details_pb2.ErrorInfo(reason="BOOM"))
    message = "secret: /srv/handler.py:12"
    status = status_pb2.Status(code=13, message=message, details=[info])
    problem = rpc_problem(
        failed(grpc.StatusCode.INTERNAL, message, (DETAILS, status.SerializeToString())), "ai"
    )
    assert "secret" not in problem.detail
    assert problem.reason == "BOOM"


def test_a_status_packed_for_another_code_is_ignored() -> None:
    # A proxy passed along some other call's details: the problem is a bare NOT_FOUND's.
    info = pack(error_details_pb2.ErrorInfo(reason="ELSEWHERE"))
    status = status_pb2.Status(code=3, message="from elsewhere", details=[info])
    error = failed(grpc.StatusCode.NOT_FOUND, "x", (DETAILS, status.SerializeToString()))
    assert shape(rpc_problem(error, "users")) == (
        404,
        "the users service refused the call (NOT_FOUND)",
        grpc.StatusCode.NOT_FOUND,
        None,
        (),
    )


def test_an_error_made_by_hand_gets_the_generic_detail() -> None:
    error = RpcError(grpc.StatusCode.UNAVAILABLE, "transport words", reason="X")
    problem = rpc_problem(error, "ai")
    assert (problem.status, problem.detail) == (503, "the ai service is unavailable; retry shortly")


def test_every_grpc_code_has_an_http_status() -> None:
    assert set(HTTP_STATUS_BY_GRPC_CODE) == set(grpc.StatusCode)


@pytest.mark.parametrize(
    ("code", "http"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, 400),
        (grpc.StatusCode.FAILED_PRECONDITION, 400),
        (grpc.StatusCode.ALREADY_EXISTS, 409),
        (grpc.StatusCode.ABORTED, 409),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, 429),
        (grpc.StatusCode.UNAVAILABLE, 503),
        (grpc.StatusCode.DEADLINE_EXCEEDED, 504),
        (grpc.StatusCode.UNIMPLEMENTED, 501),
        (grpc.StatusCode.CANCELLED, 499),
    ],
)
def test_http_mapping_follows_grpc_gateway(code: grpc.StatusCode, http: int) -> None:
    assert HTTP_STATUS_BY_GRPC_CODE[code] == http
