"""The console's routes: sign-in and sign-out, the home page, static files, and each section."""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import unquote

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy.ext.asyncio import AsyncSession

from service.auth import service as auth_service
from service.auth import throttle
from service.auth.dependencies import Principal
from service.auth.secrets import loggable_client_id
from service.console import (
    agreement_editor,
    agreement_pages,
    audit_pages,
    choice_pages,
    citizen_pages,
    release_pages,
)
from service.console import sessions as console_sessions
from service.console.config import ConsoleSettings, get_console_settings
from service.console.oidc import OIDC_CLIENT_PREFIX, OidcError, OidcSignIn, check_state
from service.console.sessions import CSRF_FIELD, PRESESSION_COOKIE, SESSION_COOKIE
from service.console.views import CONSOLE_ROLES
from service.console.web import (
    Checked,
    ConsolePageError,
    ConsoleRoute,
    PostedForm,
    Settings,
    Viewer,
    catalog_of,
    clear_cookie,
    presession_token,
    read_cookie,
    render,
    set_cookie,
)
from service.db import SessionDep
from service.errors import NotFound

logger = logging.getLogger("tellonce.console")


@asynccontextmanager
async def console_lifecycle(app: FastAPI) -> AsyncIterator[None]:
    """The console's part of the app's lifetime: the OpenID relying party made on the first
    single sign-on (``oidc_sign_in``) holds an HTTP client, closed when the app stops.

    The router's lifespan: ``include_router`` nests it inside the app's own lifecycles.
    """
    try:
        yield
    finally:
        relying_party = getattr(app.state, "console_oidc", None)
        if isinstance(relying_party, OidcSignIn):
            app.state.console_oidc = None
            await relying_party.aclose()


router = APIRouter(
    prefix="/console", route_class=ConsoleRoute, include_in_schema=False, lifespan=console_lifecycle
)

STATIC_DIR = Path(__file__).parent / "static"
STATIC_TYPES = {"console.css": "text/css; charset=utf-8", "console.js": "text/javascript; charset=utf-8"}
# Read once: two small files, served from memory.
STATIC_FILES = {name: (STATIC_DIR / name).read_bytes() for name in STATIC_TYPES}
PRESESSION_SECONDS = 30 * 60
OIDC_COOKIE = "tellonce_console_oidc"
# Over plain http only: over https every console cookie is for "/" (web.set_cookie).
OIDC_PATH = "/console/oidc"
BAD_CREDENTIALS = "The client ID or client secret is not right"


@router.get("/static/{name}")
async def static_file(name: str) -> Response:
    body = STATIC_FILES.get(name)
    if body is None:
        raise NotFound("No such file.")
    return Response(body, media_type=STATIC_TYPES[name], headers={"Cache-Control": "public, max-age=3600"})


# The longest path a sign-in returns to: a single sign-on carries it in ``state``, which
# ``oidc.check_state`` takes up to 2048 characters long (the path base64-encoded, and a MAC).
NEXT_LIMIT_BYTES = 1024
CONSOLE_HOME = "/console"


def _safe_next(target: str | None) -> str:
    """Where a sign-in returns to: ``target`` if it is a normalised path inside the console,
    else the console's home page. Never an open redirect to another site, nor a path that a
    browser resolves to outside ``/console`` (``/console/../v1``, or ``/console/%2e%2e/v1``,
    whose ``%2e`` a browser reads as a dot)."""
    if not target or len(target.encode(errors="replace")) > NEXT_LIMIT_BYTES:
        return CONSOLE_HOME
    path = re.split(r"[?#]", target, maxsplit=1)[0]
    # Decoded until nothing changes, so no escaping (once or more) hides a dot segment, a
    # slash or a backslash. Each round shortens the text, so the loop ends.
    decoded = path
    while (once := unquote(decoded)) != decoded:
        decoded = once
    # A browser drops tabs and line breaks from an address and reads "\\" as "/": no
    # console address holds a backslash or a control character, escaped or not.
    if re.search(r"[\x00-\x1f\x7f\\]", target + decoded):
        return CONSOLE_HOME
    if any(form.split("/")[:2] != ["", "console"] for form in (path, decoded)):
        return CONSOLE_HOME
    segments = decoded.split("/")
    inner = segments[2:-1] if segments[-1:] == [""] else segments[2:]  # a trailing slash aside
    if any(segment in ("", ".", "..") for segment in inner):
        return CONSOLE_HOME
    return target


async def _signed_in(
    request: Request, session: AsyncSession, principal: Principal, settings: ConsoleSettings
) -> str:
    """A new session for ``principal`` (its cookie token), after ending the session this
    browser already had, if any: a sign-in replaces it, never leaves it live beside the new one."""
    earlier = read_cookie(request, SESSION_COOKIE)
    if earlier:
        await console_sessions.end(session, earlier)
    return await console_sessions.start(session, principal, settings)


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
            "oidc": oidc_enabled(request),
        },
        csrf_token=console_sessions.csrf_token_for(token),
    )
    set_cookie(response, request, PRESESSION_COOKIE, token, PRESESSION_SECONDS)
    return response


@router.post("/sign-in", response_class=HTMLResponse)
async def sign_in(request: Request, session: SessionDep, settings: Settings, form: PostedForm) -> Response:
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
        client = await auth_service.client_with_secret(session, client_id, secret)
        if client is None or client.disabled_at is not None:
            # The client id is logged to spot guessing; the secret never is, nor text that
            # is no client id (it may be a secret in the wrong box).
            logger.warning("console sign-in refused", extra={"client_id": loggable_client_id(client_id)})
            await throttle.record_failure(session, request, client_id, endpoint="console")
            errors["client_id"] = [
                BAD_CREDENTIALS
                if client is None
                else "This client has been disabled; ask your administrator for a working one"
            ]
            status = 401
        else:
            principal = Principal.with_roles(client.client_id, client.department, *client.roles)
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
                principal = Principal.with_roles(principal.client_id, principal.department, *console_roles)
                token = await _signed_in(request, session, principal, settings)
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
            "oidc": oidc_enabled(request),
        },
        status_code=status,
        csrf_token=console_sessions.csrf_token_for(pre),
    )


@router.post("/sign-out")
async def sign_out(request: Request, session: SessionDep, viewer: Checked) -> Response:
    await console_sessions.end(session, viewer.token)
    response: Response = RedirectResponse("/console/sign-in?signed_out=1", status_code=303)
    relying_party = oidc_sign_in(request)
    if relying_party is not None and viewer.principal.client_id.startswith(OIDC_CLIENT_PREFIX):
        provider_sign_out = await relying_party.sign_out_url()
        if provider_sign_out is not None:
            # A page, not a redirect: the CSP's form-action would stop a form's redirect
            # to the provider; this navigation is the page's own.
            response = render(
                request,
                "continue.html",
                {
                    "title": "You have signed out of the console",
                    "target": provider_sign_out,
                    "link_text": "Sign out of your organisation account too",
                },
            )
    clear_cookie(response, request, SESSION_COOKIE)
    return response


# --- single sign-on (console/oidc.py) ----------------------------------------------------


def oidc_sign_in(request: Request) -> OidcSignIn | None:
    """The app's OpenID relying party, made on first use; None when OIDC is not configured."""
    found = getattr(request.app.state, "console_oidc", None)
    if isinstance(found, OidcSignIn):
        return found
    console_settings = get_console_settings(request)
    if not console_settings.oidc_configured:
        return None
    relying_party = OidcSignIn(console_settings, request.app.state.settings.public_url)
    request.app.state.console_oidc = relying_party
    return relying_party


def oidc_enabled(request: Request) -> bool:
    return get_console_settings(request).oidc_configured


@router.get("/oidc/start")
async def oidc_start(request: Request, next: str | None = None) -> Response:
    """Off to the organisation's provider, with PKCE, a nonce and a state bound to this browser."""
    relying_party = oidc_sign_in(request)
    if relying_party is None:
        raise NotFound("Single sign-on is not configured.")
    token = console_sessions.new_token()
    try:
        location = await relying_party.authorization_url(token, _safe_next(next))
    except OidcError as exc:
        raise ConsolePageError(503, "Sign-in is unavailable", str(exc)) from None
    response = RedirectResponse(location, status_code=303)
    # Lax, unlike the console's other cookies: it must come back on the provider's redirect.
    set_cookie(response, request, OIDC_COOKIE, token, PRESESSION_SECONDS, path=OIDC_PATH, samesite="lax")
    return response


# The parameters of the provider's answer that the console reads (OIDC Core 3.1.2.5 and
# 3.1.2.6, RFC 9207).
CALLBACK_PARAMETERS = ("code", "state", "iss", "error")


@router.get("/oidc/callback")
async def oidc_callback(request: Request, session: SessionDep, settings: Settings) -> Response:
    """The provider's answer: ``code`` and ``state``, with ``iss`` naming the provider, or
    ``error`` (its ``error_description`` is never shown: the provider's text, sent through
    the browser, is anyone's)."""
    relying_party = oidc_sign_in(request)
    if relying_party is None:
        raise NotFound("Single sign-on is not configured.")
    token = read_cookie(request, OIDC_COOKIE)
    answer = request.query_params
    code = answer.get("code")
    try:
        # No parameter more than once (RFC 6749 3.1): an answer that names one twice is not
        # the provider's, and acting on either value would be a guess.
        if any(len(answer.getlist(name)) > 1 for name in CALLBACK_PARAMETERS):
            raise OidcError("The sign-in service's answer could not be read; start again.")
        next_path = _safe_next(check_state(token, answer.get("state")))
        if "error" in answer or not code or len(code) > 2048:
            raise OidcError("The sign-in was cancelled or refused; start again.")
        identity = await relying_party.finish(token or "", code, issuer=answer.get("iss"))
    except OidcError as exc:
        logger.warning("console single sign-on refused", extra={"client_id": "oidc"})
        raise ConsolePageError(403, "You could not be signed in", str(exc)) from None
    principal = Principal.with_roles(identity.client_id, identity.department, *identity.roles)
    session_token = await _signed_in(request, session, principal, settings)
    logger.info("console sign-in", extra={"client_id": principal.client_id})
    # A page that moves on by itself rather than a redirect: after a cross-site redirect
    # chain the browser would not yet send the SameSite=Strict session cookie.
    response = render(
        request,
        "continue.html",
        {
            "title": f"Signed in as {identity.name}",
            "target": next_path,
            "link_text": "Continue to the console",
        },
    )
    set_cookie(response, request, SESSION_COOKIE, session_token, settings.absolute_timeout_seconds)
    clear_cookie(response, request, OIDC_COOKIE, path=OIDC_PATH, samesite="lax")
    return response


@router.get("", response_class=HTMLResponse)
async def home(request: Request, session: SessionDep, viewer: Viewer) -> Response:
    catalog = await catalog_of(session)
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


# The editor first: its /agreements/new must match before /agreements/{agreement_id}.
router.include_router(agreement_editor.router)
router.include_router(agreement_pages.router)
router.include_router(audit_pages.router)
router.include_router(citizen_pages.router)
router.include_router(choice_pages.router)
router.include_router(release_pages.router)


@router.get("/{rest:path}", response_class=HTMLResponse)
async def not_found(rest: str) -> Response:  # noqa: ARG001
    """Any other console address: an HTML page, as everywhere in the console."""
    raise ConsolePageError(404, "Page not found", "If you typed the web address, check it is correct.")
