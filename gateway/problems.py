"""Every error as one RFC 9457 `application/problem+json` body.

    {"type": "https://tandem.dev/problems/not-found", "title": "Not found", "status": 404,
     "detail": "no user 3f0c…", "code": "NOT_FOUND", "request_id": "…",
     "errors": [{"field": "email", "message": "…"}]}        (errors: invalid input only,
                                                              the first 20)

`type` is `https://tandem.dev/problems/<slug>`: the gRPC status name in kebab case
(`invalid-argument`, `not-found`, `deadline-exceeded`…) when the HTTP status is the one
that gRPC code maps to, else the HTTP reason phrase in kebab case (`precondition-failed`,
`content-too-large`, `method-not-allowed`); `title` is the same words in sentence case.
`code` is the gRPC status name: the service's, or for an error that never reached one
(a route's own, FastAPI's 404 and 405, the edge's 413…) the code a gRPC server answers
the same fault with (`_CODE_BY_HTTP_STATUS`); never null. A route raises
`ProblemError`; FastAPI's own errors (validation, 404, 405, 413) go through the
handlers here, so they share the shape.
"""

from __future__ import annotations

import http
import itertools
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import grpc
import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.responses import Response

from gateway import media
from gateway.paths import OAUTH_PATHS
from servicekit.errors import empty_text

PROBLEM_MEDIA_TYPE = "application/problem+json"
# A problem lists at most this many field errors, whatever the input held (80,000
# unknown keys made an 8 MB answer); its detail says how many more there were.
MAX_LISTED_ERRORS = 20
# A field path or message echoes the input (an unknown key): longer ones are clipped.
_MAX_ERROR_TEXT = 200
PROBLEM_TYPE_BASE = "https://tandem.dev/problems/"
REQUEST_ID_SCOPE_KEY = "tandem.request_id"

# gRPC status -> HTTP status, as grpc-gateway, Envoy and Connect map it.
HTTP_STATUS_BY_GRPC_CODE: Mapping[grpc.StatusCode, int] = {
    grpc.StatusCode.OK: 200,
    grpc.StatusCode.CANCELLED: 499,
    grpc.StatusCode.UNKNOWN: 500,
    grpc.StatusCode.INVALID_ARGUMENT: 400,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.RESOURCE_EXHAUSTED: 429,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.UNIMPLEMENTED: 501,
    grpc.StatusCode.INTERNAL: 500,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DATA_LOSS: 500,
}

# The gRPC code an error that never reached a service stands for (a route's own, the
# edge's, FastAPI's), so that `code` is never null: the code a gRPC server would answer
# the same fault with (an oversized message is RESOURCE_EXHAUSTED in gRPC too).
_CODE_BY_HTTP_STATUS: Mapping[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    405: grpc.StatusCode.UNIMPLEMENTED,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    409: grpc.StatusCode.ABORTED,
    411: grpc.StatusCode.INVALID_ARGUMENT,
    412: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    414: grpc.StatusCode.RESOURCE_EXHAUSTED,
    415: grpc.StatusCode.INVALID_ARGUMENT,
    422: grpc.StatusCode.FAILED_PRECONDITION,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    431: grpc.StatusCode.RESOURCE_EXHAUSTED,
    499: grpc.StatusCode.CANCELLED,
    500: grpc.StatusCode.INTERNAL,
    501: grpc.StatusCode.UNIMPLEMENTED,
    502: grpc.StatusCode.UNAVAILABLE,
    503: grpc.StatusCode.UNAVAILABLE,
    504: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def code_for(status: int) -> grpc.StatusCode:
    """The gRPC code of an HTTP error status that came from no service."""
    fallback = grpc.StatusCode.INVALID_ARGUMENT if status < 500 else grpc.StatusCode.INTERNAL
    return _CODE_BY_HTTP_STATUS.get(status, fallback)


class FieldError(BaseModel):
    field: str = Field(description="the invalid field's path in the request, e.g. `email`")
    message: str


class Problem(BaseModel):
    """An error (RFC 9457)."""

    type: str = Field(description="identifies the kind of problem; see the module docs")
    title: str
    status: int = Field(ge=400, le=599)
    detail: str
    code: str = Field(
        description=(
            "the gRPC status name: the service's; for an error that reached no service, "
            "the one a gRPC server answers the same fault with"
        )
    )
    request_id: str
    reason: str | None = Field(
        default=None,
        description="why, as a stable UPPER_SNAKE identifier to branch on (google.rpc.ErrorInfo)",
    )
    errors: list[FieldError] | None = Field(
        default=None, description="for invalid input: what is wrong with which field"
    )
    error: str | None = Field(
        default=None,
        description="token and revocation endpoints only: the RFC 6749 §5.2 error code",
    )
    error_description: str | None = Field(
        default=None, description="token and revocation endpoints only: as `detail`"
    )


class ProblemError(Exception):
    """Raise to answer with a problem; `code` defaults to the one `status` stands for."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        code: grpc.StatusCode | None = None,
        errors: Sequence[tuple[str, str]] = (),
        headers: Mapping[str, str] | None = None,
        reason: str | None = None,
        extra: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.code = code if code is not None else code_for(status)
        self.errors = tuple(errors)
        self.headers = dict(headers or {})
        self.reason = reason
        # Members a protocol adds to the document (OAuth 2's `error`).
        self.extra = dict(extra or {})


def unauthorized(detail: str, *, reason: str | None = None) -> ProblemError:
    # RFC 6750 §3: the challenge names the error, so clients can tell expiry apart.
    challenge = (
        'Bearer error="invalid_token"' if reason not in (None, "TOKEN_MISSING") else "Bearer"
    )
    return ProblemError(401, detail, headers={"WWW-Authenticate": challenge}, reason=reason)


def problem_document(
    status: int,
    detail: str,
    request_id: str,
    *,
    code: grpc.StatusCode | None = None,
    errors: Iterable[tuple[str, str]] = (),
    reason: str | None = None,
    extra: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    code = code if code is not None else code_for(status)
    if HTTP_STATUS_BY_GRPC_CODE.get(code) == status:
        title = code.name.replace("_", " ")
    else:
        title = _phrase(status)
    slug = title.lower().replace(" ", "-")
    document: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + slug,
        "title": _sentence_case(title),
        "status": status,
        "detail": detail,
        "code": code.name,
        "request_id": request_id,
    }
    if reason is not None:
        document["reason"] = reason
    if extra:
        document.update(extra)
    listed = [
        {"field": field, "message": message}
        for field, message in itertools.islice(errors, MAX_LISTED_ERRORS)
    ]
    if listed:
        document["errors"] = listed
    return document


def problem_bytes(error: ProblemError, request_id: str) -> bytes:
    return orjson.dumps(
        problem_document(
            error.status,
            error.detail,
            request_id,
            code=error.code,
            errors=error.errors,
            reason=error.reason,
            extra=error.extra,
        )
    )


def problem_response(error: ProblemError, request_id: str) -> Response:
    headers = dict(error.headers)
    if error.status == 401:
        headers.setdefault("WWW-Authenticate", "Bearer")
    return Response(
        problem_bytes(error, request_id),
        status_code=error.status,
        headers=headers,
        media_type=PROBLEM_MEDIA_TYPE,
    )


def request_id_of(request: Request) -> str:
    return str(request.scope.get(REQUEST_ID_SCOPE_KEY, "-"))


async def _on_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProblemError)
    return problem_response(exc, request_id_of(request))


async def _on_http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    detail = exc.detail if exc.detail and exc.detail != _phrase(status) else ""
    if not detail:
        detail = _default_detail(request, status)
    error = ProblemError(status, detail, headers=exc.headers)
    return problem_response(error, request_id_of(request))


async def _on_validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    expected = media.expected_by(request)
    wrong_type = media.unsupported(request, expected)
    if wrong_type is not None:
        oauth = {"error": "invalid_request", "error_description": wrong_type}
        error = ProblemError(415, wrong_type, extra=oauth if expected == media.FORM else None)
        return problem_response(error, request_id_of(request))
    found = exc.errors()
    errors = [_field_error(error) for error in found[:MAX_LISTED_ERRORS]]
    detail = field_detail(errors) or "the request is invalid"
    if len(found) > len(errors):
        detail += f"; and {len(found) - len(errors)} more errors"
    extra = None
    if request.url.path in OAUTH_PATHS:
        extra = {"error": "invalid_request", "error_description": detail}
    error = ProblemError(400, detail, errors=errors, extra=extra)
    return problem_response(error, request_id_of(request))


def field_detail(errors: Iterable[tuple[str, str]]) -> str:
    """The detail of invalid input, from its field errors (`email: is required; …`)."""
    return "; ".join(f"{field}: {message}" for field, message in errors)


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ProblemError, _on_problem)
    app.add_exception_handler(HTTPException, _on_http_exception)
    app.add_exception_handler(RequestValidationError, _on_validation_error)


# Pydantic's errors in the services' words (servicekit.errors, users_service.domain), so
# a field a REST client gets wrong reads as it would over gRPC; `{…}` from the error's ctx.
_MESSAGES: Mapping[str, str] = {
    "missing": "is required",
    "string_type": "must be a string",
    "string_too_short": "must be at least {min_length} characters",
    "string_too_long": "must be at most {max_length} characters",
    "extra_forbidden": "is not a field of this request",
    "model_type": "must be a JSON object",
    "model_attributes_type": "must be a JSON object",
    "dict_type": "must be a JSON object",
    "bool_type": "must be true or false",
    "bool_parsing": "must be true or false",
    "int_type": "must be an integer",
    "int_parsing": "must be an integer",
    "int_from_float": "must be an integer",
    "greater_than_equal": "must be at least {ge}",
    "less_than_equal": "must be at most {le}",
    "uuid_type": "must be a UUID",
    "uuid_parsing": "must be a UUID",
}


def _field_error(error: Mapping[str, Any]) -> tuple[str, str]:
    loc = [str(part) for part in error.get("loc", ())]
    # The first part says where the value was (body, query, path, header).
    path = ".".join(loc[1:]) if len(loc) > 1 else (loc[0] if loc else "request")
    kind = str(error.get("type", ""))
    context = error.get("ctx") or {}
    if kind == "json_invalid":
        path = "body"
        reason = context.get("error")
        message = f"is not valid JSON: {reason}" if reason else "is not valid JSON"
    elif kind == "string_too_short" and context.get("min_length") == 1:
        message = empty_text("")
    elif kind in _MESSAGES:
        message = _MESSAGES[kind].format_map(context)
    else:
        message = str(error.get("msg", "is invalid")).removeprefix("Value error, ")
    return _clip(path), _clip(message)


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_ERROR_TEXT else text[: _MAX_ERROR_TEXT - 1] + "…"


def _default_detail(request: Request, status: int) -> str:
    if status == 404:
        return f"no route matches {request.url.path}"
    if status == 405:
        return f"{request.method} is not allowed on {request.url.path}"
    return _phrase(status)


# RFC 9110's names, where Python's table still has the older ones.
_PHRASES = {413: "Content Too Large", 414: "URI Too Long", 422: "Unprocessable Content"}


def _phrase(status: int) -> str:
    if status in _PHRASES:
        return _PHRASES[status]
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


_ACRONYMS = frozenset({"URI", "HTTP"})


def _sentence_case(title: str) -> str:
    """Every title in one style: `Not found`, `Precondition failed`, `URI too long`."""
    words = [w if w in _ACRONYMS else w.lower() for w in title.split(" ")]
    return " ".join([words[0][:1].upper() + words[0][1:], *words[1:]])


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI `responses=` entries: each status answers with a Problem."""
    return {s: {"model": Problem, "description": _phrase(s)} for s in sorted(set(statuses))}


def _problem_of_any_route(status: int) -> dict[str, Any]:
    return {
        "description": _phrase(status),
        "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
    }


# What any route may answer: an unexpected fault, and the edge's refusals (a slow
# request, a URL or headers too large, the gateway at its limits; gateway.edge).
_ANY_ROUTE = {str(s): _problem_of_any_route(s) for s in (408, 414, 431, 500, 503)}


def use_problem_media_type(schema: dict[str, Any]) -> dict[str, Any]:
    """Make the generated OpenAPI document say what the gateway really sends for errors.

    FastAPI documents extra responses in the route's media type and adds a 422 response
    that never happens here (validation errors are 400 problems); fix both in place, and
    document what any route may answer (500, and the edge's 408, 414, 431, 503).
    """
    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            responses = operation.get("responses", {})
            # FastAPI's own; a route's 422 of its own (an idempotency key reused) stays.
            if responses.get("422", {}).get("description") == "Validation Error":
                del responses["422"]
            for status, response in _ANY_ROUTE.items():
                responses.setdefault(status, response)
            for status, response in responses.items():
                content = response.get("content", {})
                if status[0] in "45" and content:
                    # Listed under the route's own media type (JSON, or SSE for a stream).
                    schema_of_problem = next(iter(content.values()))
                    response["content"] = {PROBLEM_MEDIA_TYPE: schema_of_problem}
    components = schema.get("components", {}).get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    return schema
