"""Console plumbing: templates, the HTML error pages, cookies, sign-in and CSRF guards,
and the posted form.

Console routes use ``ConsoleRoute``, which turns every refusal into an HTML page (the
console is HTML, so its errors are too) and adds the security headers; the API's
problem+json handlers are untouched.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import quote

from fastapi import Depends, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from fastapi.templating import Jinja2Templates
from sqlalchemy.ext.asyncio import AsyncSession
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.auth import service as auth_service
from service.catalog import service as catalog_service
from service.catalog.schemas import Catalog
from service.console import sessions as console_sessions
from service.console import wording
from service.console.config import ConsoleSettings, get_console_settings
from service.console.oidc import OIDC_CLIENT_PREFIX
from service.console.sessions import CSRF_FIELD, PRESESSION_COOKIE, SESSION_COOKIE, SignedIn
from service.db import SessionDep
from service.errors import ServiceError

TEMPLATES_DIR = Path(__file__).parent / "templates"
templates = Jinja2Templates(directory=str(TEMPLATES_DIR))
templates.env.globals.update(
    long_date=wording.long_date,
    short_date_time=wording.short_date_time,
    department_phrase=wording.department_phrase,
)
COOKIE_PATH = "/console"
# No third-party origins at all: our own stylesheet and script, images inline or ours.
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    # Pages show audit data and citizens' access logs: never keep them in a shared cache.
    "Cache-Control": "no-store",
}
ROLE_NAMES = {"data-owner": "Data owner", "auditor": "Auditor", "citizen-portal": "Citizen portal"}


class SignInRequired(Exception):
    """No live session: send the person to the sign-in page."""


class ConsolePageError(Exception):
    """A refusal shown as an HTML page with ``status``."""

    def __init__(self, status: int, title: str, message: str) -> None:
        self.status = status
        self.title = title
        self.message = message
        super().__init__(message)


Settings = Annotated[ConsoleSettings, Depends(get_console_settings)]


# What a console page says of a citizen id that is not of the form the service issues
# (``records.schemas.is_citizen_id``, the API's one rule).
CITIZEN_ID_HINT = "A citizen ID is 36 characters: digits, letters a to f and hyphens, like 3f2c1d9e-…"


def form_citizen_id(value: object) -> str:
    """A citizen id as typed into a console form or query: trimmed and lower-cased (a UUID
    is the same in capitals), at most 64 characters kept for the page to show back. Ask
    ``is_citizen_id`` of it before it goes anywhere."""
    text = value if isinstance(value, str) else ""
    return text.strip()[:64].lower()


def catalog_names(catalog: Catalog) -> dict[str, Any]:
    """Department and purpose names by id, for the templates."""
    return {
        "names": {d.id: d.name for d in catalog.departments},
        "purposes": {p.id: p.name for p in catalog.purposes},
    }


def department_name(catalog: Catalog, department: str) -> str:
    found = catalog.department(department)
    return found.name if found else department


async def catalog_of(session: AsyncSession) -> Catalog:
    """The catalog in force (``CatalogMissing``, a page, before one is applied)."""
    return (await catalog_service.current(session))[1]


def is_https(request: Request) -> bool:
    settings = getattr(request.app.state, "settings", None)
    public_url = str(getattr(settings, "public_url", ""))
    return request.url.scheme == "https" or public_url.startswith("https://")


# Over https every console cookie is named with this prefix, which a browser keeps only
# from a secure origin, with ``Secure``, ``Path=/`` and no ``Domain`` (RFC 6265bis,
# "Cookie Name Prefixes"): a sibling subdomain (whose ``Domain`` cookie would reach this
# host) and a plain-http answer on the host (whose cookie is sent over https too) cannot
# plant one. The bare name is then never read, so a planted pre-session (a forged sign-in),
# session (fixation) or single sign-on cookie is ignored. Over plain http (development on
# loopback) the names stay bare: a browser refuses the prefix without ``Secure``.
HOST_PREFIX = "__Host-"


def cookie_name(request: Request, name: str) -> str:
    """``name`` as the console sets and reads it for ``request``."""
    return HOST_PREFIX + name if is_https(request) else name


def read_cookie(request: Request, name: str) -> str | None:
    """The console cookie ``name`` of ``request`` (never its bare name over https)."""
    return request.cookies.get(cookie_name(request, name))


def set_cookie(
    response: Response,
    request: Request,
    name: str,
    value: str,
    max_age: int,
    *,
    path: str = COOKIE_PATH,
    samesite: Literal["strict", "lax"] = "strict",
) -> None:
    """Set the console cookie ``name``: HttpOnly and ``samesite``; over https ``__Host-``
    named, Secure and for ``/`` (as the prefix demands); over http bare and for ``path``."""
    secure = is_https(request)
    response.set_cookie(
        cookie_name(request, name),
        value,
        max_age=max_age,
        path="/" if secure else path,
        httponly=True,
        samesite=samesite,
        secure=secure,
    )


def clear_cookie(
    response: Response,
    request: Request,
    name: str,
    *,
    path: str = COOKIE_PATH,
    samesite: Literal["strict", "lax"] = "strict",
) -> None:
    """Remove the cookie ``set_cookie`` set with the same ``name``, ``path`` and ``samesite``."""
    secure = is_https(request)
    response.delete_cookie(
        cookie_name(request, name),
        path="/" if secure else path,
        httponly=True,
        samesite=samesite,
        secure=secure,
    )


def render(
    request: Request,
    template: str,
    context: dict[str, Any] | None = None,
    *,
    status_code: int = 200,
    viewer: SignedIn | None = None,
    csrf_token: str | None = None,
) -> HTMLResponse:
    values: dict[str, Any] = {
        "viewer": viewer,
        "csrf_field": CSRF_FIELD,
        "csrf_token": csrf_token or (viewer.csrf_token if viewer else ""),
        "role_names": ROLE_NAMES,
    }
    values.update(context or {})
    return templates.TemplateResponse(request, template, values, status_code=status_code)


def error_page(request: Request, status: int, title: str, message: str) -> HTMLResponse:
    viewer = getattr(request.state, "console_viewer", None)
    return render(
        request,
        "error.html",
        {"title": title, "message": message, "status": status},
        status_code=status,
        viewer=viewer if isinstance(viewer, SignedIn) else None,
    )


def _secured(response: Response) -> Response:
    """``response`` with the console's security headers, where it does not set its own."""
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
    return response


def unrouted_page(request: Request, status: int, detail: str) -> Response | None:
    """The console's HTML page, with its security headers, for a refusal at ``/console``
    or under it made outside the console's routes (chiefly a method the page does not
    take, 405, a body over the limit, 413, text the database cannot keep, 400, and an
    unexpected error, 500; an unknown address is the catch-all route's own 404 page);
    None elsewhere, where the API's problem+json stands."""
    path = request.url.path
    if path != "/console" and not path.startswith("/console/"):
        return None
    return _secured(error_page(request, status, HTTPStatus(status).phrase, detail))


def sign_in_return(request: Request) -> str:
    """Where sign-in returns to: the page asked for, its query kept (``/console/audit?consumer=x``
    comes back filtered), or its path alone when the whole would be over the ``next``
    limit the sign-in page holds it to (``router.NEXT_LIMIT_BYTES``)."""
    from service.console.router import NEXT_LIMIT_BYTES  # the router imports this module

    path = quote(request.url.path)
    query = request.url.query
    target = f"{path}?{query}" if query else path
    return target if len(target.encode()) <= NEXT_LIMIT_BYTES else path


class ConsoleRoute(APIRoute):
    """Routes whose refusals are HTML pages, with the console's security headers."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        original = super().get_route_handler()

        async def handler(request: Request) -> Response:
            response: Response
            try:
                response = await original(request)
            except SignInRequired:
                target = sign_in_return(request) if request.method == "GET" else ""
                location = "/console/sign-in" + (f"?next={quote(target, safe='/')}" if target else "")
                response = RedirectResponse(location, status_code=303)
            except ConsolePageError as exc:
                response = error_page(request, exc.status, exc.title, exc.message)
            except ServiceError as exc:
                response = error_page(request, exc.status, exc.title, exc.detail)
                response.headers.update(exc.headers)  # e.g. Retry-After on a 429
            except RequestValidationError:
                response = error_page(
                    request, 400, "There is a problem with the request", "Check the address and try again."
                )
            except StarletteHTTPException as exc:
                # Raised while the route reads its request: a posted form that does not
                # parse (400), a body over the limit (413).
                title = HTTPStatus(exc.status_code).phrase
                response = error_page(request, exc.status_code, title, exc.detail)
                response.headers.update(exc.headers or {})
            return _secured(response)

        return handler


async def current_viewer(request: Request, session: SessionDep, settings: Settings) -> SignedIn:
    """The signed-in person, or a redirect to the sign-in page. The client's standing is
    read on every page, so disabling it signs its people out at once."""
    token = read_cookie(request, SESSION_COOKIE)
    viewer = await console_sessions.resume(session, token, settings)
    if viewer is None:
        raise SignInRequired()
    # A person signed in through the organisation's provider has no client row to disable:
    # the provider decides who may sign in, and the session's time limits bound the rest.
    from_provider = viewer.principal.client_id.startswith(OIDC_CLIENT_PREFIX)
    status = None if from_provider else await auth_service.client_status(session, viewer.principal.client_id)
    if not from_provider and (status is None or status.disabled):
        await console_sessions.end_all_for(session, viewer.principal.client_id)
        raise SignInRequired()
    request.state.console_viewer = viewer
    return viewer


Viewer = Annotated[SignedIn, Depends(current_viewer)]


def needs_role(*roles: str) -> Callable[..., Awaitable[SignedIn]]:
    """A dependency: the viewer, if it has one of ``roles``; a 403 page otherwise."""

    async def dependency(viewer: Viewer) -> SignedIn:
        if not viewer.principal.roles & set(roles):
            names = " or ".join(ROLE_NAMES.get(r, r) for r in roles)
            raise ConsolePageError(403, "You cannot see this page", f"This page is for the {names} role.")
        return viewer

    return dependency


# The limits a posted form is read with (Starlette's defaults, named here for all console
# forms; the body as a whole is bounded before, by errors.BodyLimitMiddleware). A form over
# one is Starlette's 400, which ConsoleRoute shows as a page.
FORM_MAX_FIELDS = 1000
FORM_MAX_FILES = 1000
FORM_MAX_PART_BYTES = 1024 * 1024


async def posted_form(request: Request) -> AsyncIterator[FormData]:
    """The posted form, read with the console's limits and closed once the page is made.

    Closing matters for a file sent with the form (no console form asks for one): Starlette
    keeps it in a spooled temporary file, otherwise left open until the garbage collector
    finds it. Console pages take the form through ``Posted``, never ``request.form()``;
    the CSRF check and the page share one form, read once.
    """
    form = await request.form(
        max_files=FORM_MAX_FILES, max_fields=FORM_MAX_FIELDS, max_part_size=FORM_MAX_PART_BYTES
    )
    try:
        yield form
    finally:
        await form.close()


# "function": closed when the page's function returns (or raises), before the response is sent.
Posted = Depends(posted_form, scope="function")
PostedForm = Annotated[FormData, Posted]


async def csrf_checked(viewer: Viewer, form: PostedForm) -> SignedIn:
    """The viewer, if the posted form carries the session's CSRF token; a 403 page otherwise."""
    submitted = form.get(CSRF_FIELD)
    if not console_sessions.csrf_matches(viewer.token, submitted if isinstance(submitted, str) else None):
        raise ConsolePageError(
            403,
            "This form could not be accepted",
            "The form was missing its security token or the token did not match your session. "
            "Go back, reload the page and try again.",
        )
    return viewer


Checked = Annotated[SignedIn, Depends(csrf_checked)]


def presession_token(request: Request) -> str | None:
    token = read_cookie(request, PRESESSION_COOKIE)
    return token if token and len(token) <= 128 else None
