"""The console's routes: sign-in and sign-out, the home page, static files, and each section."""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse

from service.auth import throttle
from service.console import agreement_pages, audit_pages, citizen_pages
from service.console import sessions as console_sessions
from service.console.ports import CONSOLE_ROLES, SignInRefused
from service.console.sessions import CSRF_FIELD, PRESESSION_COOKIE, SESSION_COOKIE
from service.console.web import (
    Backend,
    Checked,
    ConsolePageError,
    ConsoleRoute,
    Settings,
    Viewer,
    clear_cookie,
    presession_token,
    render,
    set_cookie,
)
from service.db import SessionDep
from service.errors import NotFound

logger = logging.getLogger("tellonce.console")
router = APIRouter(prefix="/console", route_class=ConsoleRoute, include_in_schema=False)

STATIC_DIR = Path(__file__).parent / "static"
STATIC_TYPES = {"console.css": "text/css; charset=utf-8", "console.js": "text/javascript; charset=utf-8"}
# Read once: two small files, served from memory.
STATIC_FILES = {name: (STATIC_DIR / name).read_bytes() for name in STATIC_TYPES}
PRESESSION_SECONDS = 30 * 60


@router.get("/static/{name}")
async def static_file(name: str) -> Response:
    body = STATIC_FILES.get(name)
    if body is None:
        raise NotFound("No such file.")
    return Response(body, media_type=STATIC_TYPES[name], headers={"Cache-Control": "public, max-age=3600"})


def _safe_next(target: str | None) -> str:
    # Only a path inside the console: never an open redirect to another site.
    if target and target.startswith("/console") and not target.startswith("//") and "\\" not in target:
        return target
    return "/console"


@router.get("/sign-in", response_class=HTMLResponse)
async def sign_in_page(request: Request, next: str | None = None, signed_out: str | None = None) -> Response:
    token = presession_token(request) or console_sessions.new_token()
    response = render(
        request,
        "sign_in.html",
        {
            "errors": {},
            "error_items": [],
            "client_id": "",
            "next": _safe_next(next),
            "notice": "You have signed out." if signed_out else None,
        },
        csrf_token=console_sessions.csrf_token_for(token),
    )
    set_cookie(response, request, PRESESSION_COOKIE, token, PRESESSION_SECONDS)
    return response


@router.post("/sign-in", response_class=HTMLResponse)
async def sign_in(request: Request, session: SessionDep, settings: Settings, backend: Backend) -> Response:
    form = await request.form()
    pre = presession_token(request)
    submitted = form.get(CSRF_FIELD)
    if not console_sessions.csrf_matches(pre, submitted if isinstance(submitted, str) else None):
        raise ConsolePageError(
            403,
            "This form could not be accepted",
            "The sign-in form was missing its security token, or it has expired. "
            "Open the sign-in page again; the console needs cookies to be allowed.",
        )
    pre = pre or ""  # csrf_matches is False without one; this only narrows the type
    client_id = str(form.get("client_id") or "").strip()[:200]
    secret = str(form.get("client_secret") or "")[:500]
    errors: dict[str, list[str]] = {}
    if not client_id:
        errors["client_id"] = ["Enter your client ID"]
    if not secret:
        errors["client_secret"] = ["Enter your client secret"]
    status = 400
    if not errors:
        # The token endpoint's failure throttle, shared: 429 after repeated failures.
        await throttle.refuse_if_throttled(session, request, client_id, endpoint="console")
        try:
            principal = await backend.check_credentials(session, client_id, secret)
        except SignInRefused as refused:
            # The client id is logged to spot guessing; the secret never is.
            logger.warning("console sign-in refused", extra={"client_id": client_id[:64]})
            await throttle.record_failure(session, request, client_id, endpoint="console")
            errors["client_id"] = [refused.message]
            status = 401
        else:
            console_roles = principal.roles & set(CONSOLE_ROLES)
            if not console_roles:
                roles = ", ".join(sorted(principal.roles)) or "no role"
                errors["client_id"] = [
                    f"This client's role ({roles}) cannot sign in to the console. "
                    "Use a data owner, auditor or citizen portal client."
                ]
                status = 403
                logger.warning("console sign-in refused: role", extra={"client_id": principal.client_id})
            else:
                principal = type(principal).with_roles(
                    principal.client_id, principal.department, *console_roles
                )
                token = await console_sessions.start(session, principal, settings)
                logger.info("console sign-in", extra={"client_id": principal.client_id})
                response = RedirectResponse(_safe_next(str(form.get("next") or "")), status_code=303)
                set_cookie(response, request, SESSION_COOKIE, token, settings.absolute_timeout_seconds)
                clear_cookie(response, request, PRESESSION_COOKIE)
                return response
    error_items = [
        (name, message) for name in ("client_id", "client_secret") for message in errors.get(name, [])
    ]
    return render(
        request,
        "sign_in.html",
        {
            "errors": errors,
            "error_items": error_items,
            "client_id": client_id,
            "next": _safe_next(str(form.get("next") or "")),
            "notice": None,
        },
        status_code=status,
        csrf_token=console_sessions.csrf_token_for(pre),
    )


@router.post("/sign-out")
async def sign_out(request: Request, session: SessionDep, viewer: Checked) -> Response:
    await console_sessions.end(session, viewer.token)
    response = RedirectResponse("/console/sign-in?signed_out=1", status_code=303)
    clear_cookie(response, request, SESSION_COOKIE)
    return response


@router.get("", response_class=HTMLResponse)
async def home(request: Request, session: SessionDep, viewer: Viewer, backend: Backend) -> Response:
    catalog = await backend.catalog(session)
    department = catalog.department(viewer.principal.department)
    return render(
        request,
        "home.html",
        {
            "department_name": department.name if department else viewer.principal.department,
            "section": "home",
        },
        viewer=viewer,
    )


router.include_router(agreement_pages.router)
router.include_router(audit_pages.router)
router.include_router(citizen_pages.router)


@router.get("/{rest:path}", response_class=HTMLResponse)
async def not_found(rest: str) -> Response:  # noqa: ARG001
    """Any other console address: an HTML page, as everywhere in the console."""
    raise ConsolePageError(404, "Page not found", "If you typed the web address, check it is correct.")
