"""The media type a route's body must be sent as; what a body of another type is told.

JSON routes learn of a wrong type only when their body fails validation (FastAPI parses
only a JSON type as JSON; `gateway.problems` answers 415 then), so the check costs a
valid request nothing; the OAuth form routes, whose fields all have defaults, check it
first (`gateway.routes.auth`).
"""

from __future__ import annotations

from starlette.requests import Request

from gateway.paths import OAUTH_PATHS

JSON = "application/json"
FORM = "application/x-www-form-urlencoded"
# What else each accepts: JSON's structured-syntax suffix; forms as multipart too.
_ALSO = {JSON: ("+json",), FORM: ("multipart/form-data",)}


def expected_by(request: Request) -> str:
    """The media type the request's route reads its body as."""
    return FORM if request.url.path in OAUTH_PATHS else JSON


def unsupported(request: Request, expected: str) -> str | None:
    """Why a body sent as another type than `expected` is refused (the 415's detail);
    None when it is of that type, or there is no body at all (its fields are missing)."""
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media == expected or (media and media.endswith(_ALSO[expected])):
        return None
    if not media and not _has_body(request):
        return None
    return f"send the body as {expected}, not {media or 'a body without Content-Type'}"


def _has_body(request: Request) -> bool:
    headers = request.headers
    return headers.get("content-length", "0") != "0" or "transfer-encoding" in headers
