"""What a failed upstream call becomes at the gateway: an HTTP problem.

`rpc_problem` turns the `tandem_client.RpcError` of a call into an `UpstreamError`, the
problem the client gets: its HTTP status (`http_status`: the gRPC code's, or its
reason's), a detail that never shows a transport error or a traceback, the invalid
fields under their REST names, and `Retry-After` where a retry may succeed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import grpc

from gateway.problems import HTTP_STATUS_BY_GRPC_CODE, ProblemError, field_detail
from servicekit.errors import retry_seconds
from servicekit.idempotency import KEY_REUSED
from tandem_client import RpcError

_UNEXPECTED = (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DATA_LOSS)
# Refusals whose HTTP status is not the one their gRPC code maps to: an idempotency key
# reused with another body is 422 (FAILED_PRECONDITION would say 400), as the IETF
# Idempotency-Key draft has it.
HTTP_STATUS_BY_REASON: Mapping[str, int] = {KEY_REUSED: 422}
_RETRYABLE = (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE)


class UpstreamError(ProblemError):
    """A failed upstream call, as the problem it becomes; keeps the gRPC code and reason."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        grpc_code: grpc.StatusCode,
        reason: str | None,
        errors: Sequence[tuple[str, str]] = (),
        headers: Mapping[str, str] | None = None,
        retry_after: float | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(
            status, detail, code=grpc_code, errors=errors, headers=headers, reason=reason
        )
        self.grpc_code = grpc_code
        # The upstream's RetryInfo and ErrorInfo metadata (gateway.refusals reads them).
        self.retry_after = retry_after
        self.metadata = dict(metadata or {})


def rpc_problem(error: RpcError, upstream: str) -> UpstreamError:
    """The problem a failed call to `upstream` ("users", "ai") becomes.

    The detail is the upstream's own message when it sent rich details (our services
    compose those for clients); otherwise, and for every unexpected fault, a generic
    one: transport errors and tracebacks never reach the client.
    """
    code = error.code
    headers = {}
    if code in _RETRYABLE and error.retry_after is not None:
        headers["Retry-After"] = str(retry_seconds(error.retry_after))
    elif code is grpc.StatusCode.CANCELLED:
        headers["Retry-After"] = "1"
    errors = [(rest_field(v.field), v.description) for v in error.violations]
    # Field errors name the fields as the REST body does, in the detail too.
    detail = field_detail(errors) if errors else _detail(error, upstream)
    return UpstreamError(
        http_status(error),
        detail,
        grpc_code=code,
        reason=error.reason,
        errors=errors,
        headers=headers,
        retry_after=error.retry_after,
        metadata=error.metadata,
    )


def http_status(error: RpcError) -> int:
    """The HTTP status of a failed call: its reason's, else its gRPC code's."""
    if error.reason is not None and error.reason in HTTP_STATUS_BY_REASON:
        return HTTP_STATUS_BY_REASON[error.reason]
    if error.code is grpc.StatusCode.CANCELLED:
        # The gateway's own cancellations (a client gone) raise CancelledError, never
        # this: a call ended CANCELLED by the upstream, which stopped (a shutdown whose
        # grace ended) before answering. The client did nothing wrong; 499 would say so.
        return 503
    return HTTP_STATUS_BY_GRPC_CODE.get(error.code, 500)


def deadline_exceeded(upstream: str) -> UpstreamError:
    """The problem of a call to `upstream` that ran out of time."""
    code = grpc.StatusCode.DEADLINE_EXCEEDED
    return UpstreamError(
        HTTP_STATUS_BY_GRPC_CODE[code],
        _detail(RpcError(code, ""), upstream),
        grpc_code=code,
        reason=None,
    )


def rest_field(field: str) -> str:
    """A request field path of the gRPC API as the REST API names it (`user.email`)."""
    return field.removeprefix("user.")


# Details for statuses that came without a message of our services (from grpc itself).
_GENERIC_DETAILS: Mapping[grpc.StatusCode, str] = {
    grpc.StatusCode.UNAVAILABLE: "the {upstream} service is unavailable; retry shortly",
    grpc.StatusCode.DEADLINE_EXCEEDED: "the {upstream} service did not answer in time",
    grpc.StatusCode.UNIMPLEMENTED: "the {upstream} service does not support this call",
    grpc.StatusCode.CANCELLED: "the {upstream} service stopped before it answered; retry shortly",
}


def _detail(error: RpcError, upstream: str) -> str:
    code = error.code
    if code in _UNEXPECTED:
        return f"the {upstream} service failed unexpectedly; quote the request id to report it"
    if error.status is not None and error.message:
        return error.message
    template = _GENERIC_DETAILS.get(code, "the {upstream} service refused the call ({code})")
    return template.format(upstream=upstream, code=code.name)
