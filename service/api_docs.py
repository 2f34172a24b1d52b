"""``/docs`` (Swagger UI) and ``/redoc`` (ReDoc), served with no third party involved.

The JavaScript and CSS come from the installed ``fastapi-offline`` package and are served
under ``/docs-assets``, so the pages work offline. A Content-Security-Policy limits the
pages to this origin: ReDoc's sidebar would otherwise fetch its logo from a CDN.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import fastapi_offline
from fastapi import FastAPI
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.errors import PROBLEM_JSON, BadRequest, RangeNotSatisfiable, ServiceError, problem_response

ASSETS_PATH = "/docs-assets"
ASSETS_DIR = Path(fastapi_offline.__file__).parent / "static"
# Swagger UI starts from an inline script; ReDoc runs a worker from a blob URL.
DOCS_CSP = (
    "default-src 'self'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; font-src 'self' data:; connect-src 'self'; worker-src 'self' blob:; "
    "frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
)


def _with_policy(page: HTMLResponse) -> HTMLResponse:
    page.headers["Content-Security-Policy"] = DOCS_CSP
    page.headers["X-Content-Type-Options"] = "nosniff"
    return page


class ProblemRangeErrors:
    """Starlette's file responses refuse a ``Range`` they cannot serve with plain text (a
    400 for a malformed one, a 416 beyond the file's end); answered here as problems, the
    416 keeping its ``Content-Range``. The refused header is not repeated."""

    _ERRORS: ClassVar[dict[int, ServiceError]] = {
        400: BadRequest("The Range header is malformed or not in bytes; send none to get the whole file."),
        416: RangeNotSatisfiable("The Range header asks for bytes beyond the end of the file."),
    }

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        replaced = False

        async def problems(message: Message) -> None:
            nonlocal replaced
            if message["type"] == "http.response.start":
                headers = dict(message.get("headers", []))
                error = self._ERRORS.get(message["status"])
                if error is not None and headers.get(b"content-type", b"") != PROBLEM_JSON.encode():
                    replaced = True
                    response = problem_response(error)
                    if b"content-range" in headers:
                        response.headers["Content-Range"] = headers[b"content-range"].decode("latin-1")
                    await send(
                        {
                            "type": "http.response.start",
                            "status": error.status,
                            "headers": response.raw_headers,
                        }
                    )
                    await send({"type": "http.response.body", "body": response.body})
                    return
            if replaced:
                return  # the plain-text body, not sent
            await send(message)

        await self.app(scope, receive, problems)


def install_docs(app: FastAPI) -> None:
    """Mount the assets and add the two pages (the app is made with docs_url=redoc_url=None)."""
    app.mount(ASSETS_PATH, ProblemRangeErrors(StaticFiles(directory=ASSETS_DIR)), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"
    redirect_url = app.swagger_ui_oauth2_redirect_url or "/docs/oauth2-redirect"

    @app.get("/docs", include_in_schema=False)
    async def swagger_ui() -> HTMLResponse:
        return _with_policy(
            get_swagger_ui_html(
                openapi_url=openapi_url,
                title=f"{app.title}: API reference",
                oauth2_redirect_url=redirect_url,
                swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
                swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
                swagger_favicon_url=f"{ASSETS_PATH}/favicon.png",
            )
        )

    @app.get(redirect_url, include_in_schema=False)
    async def swagger_ui_redirect() -> HTMLResponse:
        return _with_policy(get_swagger_ui_oauth2_redirect_html())

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return _with_policy(
            get_redoc_html(
                openapi_url=openapi_url,
                title=f"{app.title}: API reference",
                redoc_js_url=f"{ASSETS_PATH}/redoc.standalone.js",
                redoc_favicon_url=f"{ASSETS_PATH}/favicon.png",
                with_google_fonts=False,
            )
        )
