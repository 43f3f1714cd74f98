"""`/docs` (Swagger UI) and `/redoc`, with their JavaScript and CSS served from here.

The assets ship in the fastapi-offline package; FastAPI's defaults would load them from
a CDN, which a machine without internet (or a strict CSP) cannot reach.

Each page carries a Content-Security-Policy: scripts only from here and the page's own
inline script (by its hash), styles from here and inline (Swagger UI and ReDoc style
their elements in place), requests to this origin only, no framing.
"""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.staticfiles import StaticFiles
from starlette.responses import HTMLResponse

ASSETS = Path(fastapi_offline.__file__).parent / "static"
ASSETS_URL = "/static-docs"
DOCS_URL = "/docs"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"
REDOC_URL = "/redoc"

_INLINE_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.DOTALL)
_POLICY = (
    "default-src 'none'",
    "script-src 'self'{scripts}",
    "style-src 'self' 'unsafe-inline'",
    "img-src 'self' data:",
    "font-src 'self' data:",
    "connect-src 'self'",
    # ReDoc searches in a worker it makes from a blob.
    "worker-src 'self' blob:",
    "base-uri 'none'",
    "form-action 'self'",
    "frame-ancestors 'none'",
)


def with_policy(page: HTMLResponse) -> HTMLResponse:
    """`page` with a Content-Security-Policy that lets exactly its own scripts run."""
    scripts = "".join(
        f" 'sha256-{base64.b64encode(hashlib.sha256(script).digest()).decode()}'"
        for script in _INLINE_SCRIPT.findall(page.body)
    )
    page.headers["Content-Security-Policy"] = "; ".join(_POLICY).format(scripts=scripts)
    return page


def install_docs(app: FastAPI) -> None:
    """Serve the docs pages and their assets; the app must have no docs of its own."""
    assert app.docs_url is None
    assert app.redoc_url is None
    openapi_url = app.openapi_url or "/openapi.json"
    app.mount(ASSETS_URL, StaticFiles(directory=ASSETS), name="docs-assets")

    # Made once: the pages never change while the app runs.
    swagger_page = with_policy(
        get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} - Swagger UI",
            oauth2_redirect_url=OAUTH2_REDIRECT_URL,
            swagger_js_url=f"{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{ASSETS_URL}/favicon.png",
        )
    )
    redirect_page = with_policy(get_swagger_ui_oauth2_redirect_html())
    redoc_page = with_policy(
        get_redoc_html(
            openapi_url=openapi_url,
            title=f"{app.title} - ReDoc",
            redoc_js_url=f"{ASSETS_URL}/redoc.standalone.js",
            redoc_favicon_url=f"{ASSETS_URL}/favicon.png",
            with_google_fonts=False,
        )
    )

    @app.get(DOCS_URL, include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return _copy(swagger_page)

    @app.get(OAUTH2_REDIRECT_URL, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return _copy(redirect_page)

    @app.get(REDOC_URL, include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return _copy(redoc_page)


def _copy(page: HTMLResponse) -> HTMLResponse:
    # A response object per request, as Starlette expects; the bytes are shared.
    policy = page.headers["content-security-policy"]
    return HTMLResponse(page.body, headers={"Content-Security-Policy": policy})
