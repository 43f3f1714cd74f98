"""CORS for the browser origins `GATEWAY_CORS_ORIGINS` lists; none, no CORS at all.

Without CORS headers a browser lets only pages of the gateway's own origin read its
answers, which is the safe default for an API whose callers are mostly not browsers.
Credentials are bearer tokens in `Authorization`, never cookies, so no origin is ever
allowed credentials (cookies) and the list cannot be a wildcard.
"""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import FastAPI
from starlette.middleware.cors import CORSMiddleware

# What a browser page may send, and read of an answer, besides the CORS-safelisted ones.
ALLOWED_HEADERS = ("Authorization", "Content-Type", "If-Match", "Idempotency-Key", "X-Request-ID")
EXPOSED_HEADERS = ("ETag", "Location", "Retry-After", "X-Request-ID")
ALLOWED_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")
# How long a browser may reuse a preflight's answer.
PREFLIGHT_MAX_AGE = 600


def install_cors(app: FastAPI, origins: Sequence[str]) -> None:
    """Answer CORS for `origins`; does nothing when there are none."""
    if not origins:
        return
    app.add_middleware(
        CORSMiddleware,
        allow_origins=list(origins),
        allow_methods=list(ALLOWED_METHODS),
        allow_headers=list(ALLOWED_HEADERS),
        expose_headers=list(EXPOSED_HEADERS),
        allow_credentials=False,
        max_age=PREFLIGHT_MAX_AGE,
    )
