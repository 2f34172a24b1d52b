"""``POST /oauth/token``, the discovery documents, and ``/v1/clients`` (an admin client's
registration and disabling of its department's clients)."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Request, Response
from fastapi.responses import JSONResponse
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Message, Send

from service.auth import service as auth_service
from service.auth import throttle
from service.auth.client_keys import ASSERTION_ALGORITHMS
from service.auth.dependencies import Principal, require
from service.auth.keys import ALGORITHM
from service.auth.runtime import TOKEN_PATH, AuthRuntime, get_auth
from service.auth.schemas import ClientIn, ClientList, ClientOut, NewClientOut
from service.auth.scopes import ALL_SCOPES
from service.auth.server import (
    AUTH_METHODS,
    MalformedClientAuthentication,
    PreparedTokenRequest,
    RegisteredClient,
    candidate_client_id,
)
from service.db import SessionDep
from service.errors import sayable_name

router = APIRouter(tags=["auth"])
AuthDep = Annotated[AuthRuntime, Depends(get_auth)]


_NEVER_CACHED = [(b"cache-control", b"no-store"), (b"pragma", b"no-cache")]


def never_cached(send: Send) -> Send:
    """``send`` for a request to the token endpoint: whatever answers it (a token, an RFC
    6749 error, the throttle's 429, a 503 or 500 problem, a 405), the response carries
    ``Cache-Control: no-store`` and ``Pragma: no-cache``, as RFC 6749 5.1 and 5.2 ask.
    Applied by the app around every layer, the 500 handler's included."""

    async def send_never_cached(message: Message) -> None:
        if message["type"] == "http.response.start":
            kept = [
                (name, value)
                for name, value in message.get("headers", ())
                if name.lower() not in (b"cache-control", b"pragma")
            ]
            message = {**message, "headers": [*kept, *_NEVER_CACHED]}
        await send(message)

    return send_never_cached


def _oauth_error(error: str, description: str, status: int = 400) -> JSONResponse:
    headers: dict[str, str] = {}
    if error == "invalid_client":
        status = 401
        headers["WWW-Authenticate"] = 'Basic realm="tellonce"'
    return JSONResponse(
        {"error": error, "error_description": description}, status_code=status, headers=headers
    )


@router.post(TOKEN_PATH, include_in_schema=True, summary="Get an access token (client credentials)")
async def token(request: Request, session: SessionDep, auth: AuthDep) -> JSONResponse:
    """OAuth2 client credentials (RFC 6749 4.4).

    Authenticate with `client_secret_basic`, `client_secret_post` or `private_key_jwt`
    (RFC 7523, audience: this URL). Send `grant_type=client_credentials` and optionally
    `scope`. Errors follow RFC 6749 (`{"error": "invalid_client"}` and so on).
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != "application/x-www-form-urlencoded":
        return _oauth_error("invalid_request", "The body must be application/x-www-form-urlencoded.")
    try:
        submitted = await request.form()
    except StarletteHTTPException as exc:
        # A chunked body over the limit, refused as it streams (413: errors.BodyLimitMiddleware
        # answers a declared Content-Length over it itself, in the same words), or a body
        # the form parser refuses (400: too many fields), answered as RFC 6749 5.2 says.
        return _oauth_error("invalid_request", str(exc.detail), status=413 if exc.status_code == 413 else 400)
    form: dict[str, str] = {}
    for name, value in submitted.multi_items():
        if isinstance(value, UploadFile) or name in form:
            # RFC 6749 3.2: parameters must not be repeated. The name is said only if it has
            # a name's shape: it may be a value (personal data), and an error_description
            # holds printable ASCII without '"' or '\' (5.2), which such a name is.
            said = sayable_name(name)
            named = "A parameter" if said is None else f"Parameter {said}"
            return _oauth_error("invalid_request", f"{named} is repeated or not text.")
        form[name] = value
    # RFC 6749 3.2: a parameter sent without a value is treated as if it were omitted.
    form = {name: value for name, value in form.items() if value}
    if not form.get("grant_type"):
        # RFC 6749 5.2: a missing parameter is invalid_request (authlib would answer
        # unsupported_grant_type, which is for a grant type given but not supported).
        return _oauth_error("invalid_request", "The grant_type parameter is required.")
    prepared = PreparedTokenRequest(request.headers, form)
    try:
        client_id = candidate_client_id(request.headers, form)
    except MalformedClientAuthentication as exc:
        return _oauth_error(exc.error, exc.description)
    # Repeated failures for this client id or from this address: 429 before any check.
    await throttle.refuse_if_throttled(session, request, client_id, endpoint="token")
    if client_id is not None and len(client_id) <= 64:
        row = await auth_service.get_client(session, client_id)
        if row is not None and row.disabled_at is None:
            prepared.client = RegisteredClient.from_row(row)
    # authlib is synchronous and does no I/O here: it verifies and signs in memory, and
    # nothing awaits between setting and clearing the prepared request.
    response = auth.server.respond(prepared)
    if response.status_code == 200 and prepared.assertion is not None:
        # A private_key_jwt assertion is good once: its id is kept until it expires.
        if not await auth_service.first_use_of_assertion(session, prepared.assertion):
            response = _oauth_error("invalid_client", "The client assertion was already used.")
    if response.status_code == 401:
        await throttle.record_failure(session, request, client_id, endpoint="token")
    return response


@router.get("/.well-known/jwks.json", summary="Public keys that sign access tokens")
async def jwks(auth: AuthDep) -> JSONResponse:
    """The JSON Web Key Set to verify access tokens with, including recently retired keys."""
    return JSONResponse(auth.keys.jwks(), headers={"Cache-Control": "public, max-age=60"})


@router.get(
    "/.well-known/evidence-keys.json", summary="Every public key that has signed, retired ones included"
)
async def evidence_keys(auth: AuthDep) -> JSONResponse:
    """The JSON Web Key Set to verify signed artefacts kept as evidence (a consent's
    ``signature``) with: every key the service has signed with, however long ago it was
    retired. Access tokens are verified with ``/.well-known/jwks.json`` only."""
    keys = await asyncio.to_thread(auth.keys.evidence_jwks)
    return JSONResponse(keys, headers={"Cache-Control": "public, max-age=60"})


@router.get("/.well-known/oauth-authorization-server", summary="Authorization server metadata")
async def metadata(auth: AuthDep) -> dict[str, Any]:
    """RFC 8414 metadata."""
    return {
        "issuer": auth.issuer_url,
        "token_endpoint": auth.token_url,
        "jwks_uri": auth.issuer_url + "/.well-known/jwks.json",
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": AUTH_METHODS,
        "token_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGORITHMS,
        "scopes_supported": sorted(ALL_SCOPES),
        "response_types_supported": [],
        "access_token_signing_alg_values_supported": [ALGORITHM],
    }


# --- /v1/clients: an admin client manages its own department's clients ------------------

Admin = Annotated[Principal, Depends(require("admin:clients"))]
# Printable ASCII, as every issued id is: a NUL could not even reach PostgreSQL as text.
ClientId = Annotated[str, Path(max_length=64, pattern=r"^[!-~]+$", description="The client's id.")]


@router.get("/v1/clients", tags=["clients"], summary="Your department's clients")
async def list_clients(admin: Admin, session: SessionDep) -> ClientList:
    """Every client of your department, oldest first, with its roles and whether it is
    disabled. Secrets are never shown."""
    clients = await auth_service.list_clients(session, department=admin.department)
    return ClientList(items=[ClientOut.of(client) for client in clients])


@router.post("/v1/clients", tags=["clients"], status_code=201, summary="Register a client")
async def create_client(
    body: ClientIn, admin: Admin, session: SessionDep, response: Response
) -> NewClientOut:
    """Register a client of your department with the roles `consumer`, `writer`,
    `registrar` or `data-owner` (the operator's `tellonce clients create` grants the
    others). Its secret is in this answer and never again; with `jwk` it authenticates
    with `private_key_jwt` and has no secret. Audited as `client-create` under your client."""
    department = body.department or admin.department
    auth_service.check_admin_grant(admin.department, department, body.roles)
    public_jwk = auth_service.check_public_jwk(body.jwk) if body.jwk is not None else None
    created = await auth_service.register_client(
        session,
        admin.client_id,
        department=department,
        roles=body.roles,
        name=body.name,
        public_jwk=public_jwk,
        rate_per_second=body.rate_per_second,
        rate_burst=body.rate_burst,
    )
    response.headers["Cache-Control"] = "no-store"
    return NewClientOut(client_id=created.client_id, client_secret=created.client_secret)


@router.post("/v1/clients/{client_id}/disable", tags=["clients"], summary="Disable a client")
async def disable_client(client_id: ClientId, admin: Admin, session: SessionDep) -> ClientOut:
    """Disable one of your department's clients: its tokens are refused from the very next
    request, by every replica. Audited as `client-disable` under your client; disabling a
    disabled client changes nothing. 404 for a client of another department; 403 for one
    holding a role only an operator grants (auditor, admin)."""
    client = await auth_service.disable_client(
        session, admin.client_id, client_id, department=admin.department
    )
    return ClientOut.of(client)
