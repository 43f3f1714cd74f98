"""Anthropic SDK errors as the gRPC statuses an ai-service caller can act on.

Transient provider trouble (429, 5xx, 529, connection) is retryable - UNAVAILABLE or
RESOURCE_EXHAUSTED with the provider's retry-after; what only the operator can fix
(key, model, billing) is FAILED_PRECONDITION or RESOURCE_EXHAUSTED with a message that
names the setting; what the caller's text caused is INVALID_ARGUMENT.
"""

from __future__ import annotations

import email.utils
import logging
import time
from collections.abc import Callable

import anthropic

from ai_service.backends.base import UpstreamTrace
from servicekit.errors import (
    Aborted,
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    ResourceExhausted,
    ServiceError,
    Unavailable,
)

log = logging.getLogger(__name__)


def translate(exc: anthropic.APIError, *, model: str, trace: UpstreamTrace) -> ServiceError:
    request_id = getattr(exc, "request_id", None)
    if request_id:
        trace.request_ids.append(request_id)
    error = _translate(exc, model)
    if request_id:
        error.metadata["anthropic_request_id"] = request_id
    log.warning(
        "anthropic request %s failed: %s -> %s",
        request_id or "(no id)",
        type(exc).__name__,
        error.code.name,
    )
    return error


def _translate(exc: anthropic.APIError, model: str) -> ServiceError:
    if isinstance(exc, anthropic.APITimeoutError):
        return DeadlineExceeded("the model did not answer in time", reason="PROVIDER_TIMEOUT")
    if isinstance(exc, anthropic.APIConnectionError):
        return Unavailable("the model provider cannot be reached", reason="PROVIDER_UNREACHABLE")
    if not isinstance(exc, anthropic.APIStatusError):
        return Unavailable("the model provider answered unexpectedly", reason="PROVIDER_ERROR")
    detail = exc.api_message or exc.type or "no detail"
    if exc.status_code == 200:
        return _stream_error(exc, detail)
    for error_class, build in _BY_CLASS:
        if isinstance(exc, error_class):
            return build(exc, detail, model)
    return FailedPrecondition(
        f"the model provider rejected the request ({exc.status_code} {detail})",
        reason="PROVIDER_REJECTED",
    )


def _stream_error(exc: anthropic.APIStatusError, detail: str) -> ServiceError:
    """An `error` event in the middle of a stream (the HTTP status was already 200)."""
    if exc.type == "rate_limit_error":
        return ResourceExhausted(
            "the model provider's rate limit was hit", reason="PROVIDER_RATE_LIMITED"
        )
    return Unavailable(
        f"the model provider failed mid-answer ({detail})", reason="PROVIDER_STREAM_ERROR"
    )


_Build = Callable[[anthropic.APIStatusError, str, str], ServiceError]

# Most specific first: OverloadedError is an InternalServerError, and so on.
_BY_CLASS: tuple[tuple[type[anthropic.APIStatusError], _Build], ...] = (
    (
        anthropic.RateLimitError,
        lambda exc, _d, _m: ResourceExhausted(
            "the model provider's rate limit was hit; retry later",
            retry_after=_retry_after(exc),
            reason="PROVIDER_RATE_LIMITED",
        ),
    ),
    (
        anthropic.InternalServerError,
        lambda exc, _d, _m: Unavailable(
            f"the model provider is unavailable ({exc.status_code} {exc.type or 'error'})",
            retry_after=_retry_after(exc),
            reason="PROVIDER_UNAVAILABLE",
        ),
    ),
    (
        anthropic.RequestTimeoutError,
        lambda _e, _d, _m: DeadlineExceeded(
            "the model provider timed out", reason="PROVIDER_TIMEOUT"
        ),
    ),
    (
        anthropic.AuthenticationError,
        lambda exc, detail, _m: FailedPrecondition(
            f"the model provider rejected the API key ({exc.status_code} {detail}); "
            "check ANTHROPIC_API_KEY",
            reason="PROVIDER_AUTH",
        ),
    ),
    (
        anthropic.PermissionDeniedError,
        lambda exc, detail, _m: FailedPrecondition(
            f"the API key may not do this ({exc.status_code} {detail}); check ANTHROPIC_API_KEY",
            reason="PROVIDER_AUTH",
        ),
    ),
    (
        anthropic.NotFoundError,
        lambda _e, detail, model: FailedPrecondition(
            f"the model {model!r} was not found ({detail}); check AI_MODELS",
            reason="PROVIDER_MODEL_NOT_FOUND",
        ),
    ),
    (
        anthropic.PaymentRequiredError,
        lambda _e, detail, _m: ResourceExhausted(
            f"the model provider refused for billing reasons ({detail})",
            reason="PROVIDER_BILLING",
        ),
    ),
    (
        anthropic.ContentTooLargeError,
        lambda _e, _d, _m: InvalidArgument.field("text", "is too large for the model"),
    ),
    (
        anthropic.ConflictError,
        lambda _e, _d, _m: Aborted(
            "the model provider reported a conflict; retry", reason="PROVIDER_CONFLICT"
        ),
    ),
)


def _retry_after(exc: anthropic.APIStatusError) -> float | None:
    headers = exc.response.headers
    if (millis := headers.get("retry-after-ms")) is not None:
        try:
            return float(millis) / 1000
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        parsed = email.utils.parsedate_tz(value)
        return max(0.0, email.utils.mktime_tz(parsed) - time.time()) if parsed else None
