"""The caller of a request, and the scopes an endpoint requires.

``get_principal`` is the single place a request is authenticated: a bearer access token
from ``POST /oauth/token``, checked for signature, type, issuer, audience and expiry,
then the client's standing and rate limit. Tests that are not about tokens act as a
client by overriding it (``tests/fixtures/auth.py``). Endpoints declare what they need
with ``require("scope", ...)``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from service import tracing
from service.auth import service as auth_service
from service.auth.errors import InvalidToken
from service.auth.ratelimit import retry_after_seconds
from service.auth.runtime import get_auth
from service.auth.scopes import scopes_for
from service.auth.tokens import TokenInvalid
from service.db import DriverReads, driver_reads
from service.errors import (
    InsufficientScope,
    MalformedAuthorization,
    TooManyRequests,
    Unauthenticated,
    ValidationFailed,
)

ON_BEHALF_OF = "X-On-Behalf-Of"
ON_BEHALF_OF_MAX = 200
_ON_BEHALF_OF_KEY = ON_BEHALF_OF.lower().encode("latin-1")


@dataclass(frozen=True)
class Principal:
    """An authenticated client: one department, some roles, the scopes they carry."""

    client_id: str
    department: str
    roles: frozenset[str] = field(default_factory=frozenset)
    scopes: frozenset[str] = field(default_factory=frozenset)
    # Who the client acts for, from X-On-Behalf-Of; recorded in the audit only.
    on_behalf_of: str | None = None

    @classmethod
    def with_roles(cls, client_id: str, department: str, *roles: str) -> Principal:
        role_set = frozenset(roles)
        return cls(client_id=client_id, department=department, roles=role_set, scopes=scopes_for(role_set))


def header(request: Request, name: bytes) -> str | None:
    """The first value of the header ``name`` (in lower case, as ASGI servers give names), as
    ``request.headers.get`` reads it, straight from the scope: without building Starlette's
    ``Headers`` or raising and catching ``KeyError`` for a header that is not sent."""
    headers: list[tuple[bytes, bytes]] = request.scope["headers"]
    for key, value in headers:
        if key == name:
            return value.decode("latin-1")
    return None


def _bearer_token(request: Request) -> str:
    authorization = header(request, b"authorization")
    if not authorization:
        raise Unauthenticated("A bearer access token is required.", error=None)
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer":
        raise Unauthenticated("Send the access token as 'Authorization: Bearer <token>'.", error=None)
    if not token:
        raise MalformedAuthorization("Send the access token as 'Authorization: Bearer <token>'.")
    return token


def _on_behalf_of(request: Request) -> str | None:
    """The officer named by X-On-Behalf-Of, read as UTF-8: the audit records the name that
    was sent ("Zoë", not the "ZoÃ«" a Latin-1 reading of its bytes would make); bytes that
    are not UTF-8 are refused rather than guessed at."""
    headers: list[tuple[bytes, bytes]] = request.scope["headers"]
    raw = [value for key, value in headers if key == _ON_BEHALF_OF_KEY]
    if not raw:
        return None
    try:
        value = raw[0].decode()
    except UnicodeDecodeError:
        value = ""
    if len(raw) > 1 or not value or len(value) > ON_BEHALF_OF_MAX or not value.isprintable():
        raise ValidationFailed(
            "X-On-Behalf-Of must be one printable UTF-8 value of at most 200 characters.",
            errors=[{"loc": ["header", ON_BEHALF_OF], "msg": "printable UTF-8, 1 to 200 characters"}],
        )
    return value


async def get_principal(request: Request) -> Principal:
    """Authenticate the request with its bearer access token.

    After the token (cached once verified), the revocation epoch key, read on the raw
    driver (``service.db.DriverReads``) as ``SharedEpochReads`` decides: on PostgreSQL
    concurrent requests share a read that began after each of them arrived; on SQLite the
    key is read again only when any other connection has committed since the last read
    (the commit marker, ``PRAGMA data_version``). The client's standing and rate limit
    are read again only when that key has moved. ``tellonce clients disable`` moves it, so a
    disabled client is refused on the very next request in every process and replica,
    with no invalidation messages. Then the rate limit: in memory, or on PostgreSQL one
    claim on the client's bucket shared by every replica, per batch of its concurrent
    requests (``service.auth.ratelimit``). ``bench/auth.py`` measures this path.
    """
    with tracing.span("auth"):
        return await _authenticate(request, driver_reads(request))


async def _authenticate(request: Request, reads: DriverReads) -> Principal:
    auth = get_auth(request)
    token = _bearer_token(request)
    try:
        verified = auth.verifier.verify(token)
    except TokenInvalid as exc:
        raise InvalidToken(str(exc)) from None
    # The revocation epoch moves whenever a policy changes or a client is disabled, in
    # any process. A client's standing read under the current epoch is still true, so it
    # is read from the database only when the epoch has moved since.
    epoch = await auth.epochs.key(reads)
    # On the request's state (``request.state.epoch_key``), without building its ``State``.
    request.scope.setdefault("state", {})["epoch_key"] = epoch
    status = auth.standing.get(verified.client_id, epoch)
    if status is None:
        status = await auth_service.client_standing(reads, verified.client_id)
        auth.standing.put(verified.client_id, epoch, status)
    if status is None or status.disabled:
        # The cached entry may stay: this check runs on every request, cached or not.
        raise InvalidToken("The client is disabled or no longer registered.")
    wait = await auth.limiter.take(reads, verified.client_id, status.rate_per_second, status.rate_burst)
    if wait is not None:
        raise TooManyRequests(retry_after_seconds(wait), "This client is over its request rate; retry later.")
    return Principal(
        client_id=verified.client_id,
        department=verified.department,
        roles=verified.roles,
        scopes=verified.scopes,
        on_behalf_of=_on_behalf_of(request),
    )


def demand(principal: Principal, needed: frozenset[str]) -> Principal:
    """``principal`` if it carries every scope of ``needed``; 403 naming the missing ones."""
    missing = needed - principal.scopes
    if missing:
        raise InsufficientScope(f"This call needs the scope(s): {', '.join(sorted(missing))}.", missing)
    return principal


def require(*scopes: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency that authenticates and then demands every one of ``scopes`` (403 if missing)."""
    needed = frozenset(scopes)

    async def dependency(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
        return demand(principal, needed)

    # Read by the OpenAPI document (service/openapi.py) to declare each route's scopes.
    dependency.required_scopes = needed  # type: ignore[attr-defined]
    return dependency


async def optional_principal(request: Request) -> Principal | None:
    """The caller if it sent a token, else None: for endpoints an operator may make public."""
    if "authorization" not in request.headers:
        return None
    return await get_principal(request)
