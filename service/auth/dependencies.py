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
from sqlalchemy.ext.asyncio import AsyncSession

from service import tracing
from service.auth import service as auth_service
from service.auth.errors import InvalidToken
from service.auth.ratelimit import retry_after_seconds
from service.auth.runtime import get_auth
from service.auth.scopes import scopes_for
from service.auth.tokens import TokenInvalid
from service.db import SessionDep
from service.errors import Forbidden, TooManyRequests, Unauthenticated, ValidationFailed
from service.policy import epoch as policy_epoch

ON_BEHALF_OF = "X-On-Behalf-Of"
ON_BEHALF_OF_MAX = 200


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


def _bearer_token(request: Request) -> str:
    authorization = request.headers.get("authorization")
    if not authorization:
        raise Unauthenticated("A bearer access token is required.", error="invalid_request")
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated(
            "Send the access token as 'Authorization: Bearer <token>'.", error="invalid_request"
        )
    return token


def _on_behalf_of(request: Request) -> str | None:
    values = request.headers.getlist(ON_BEHALF_OF)
    if not values:
        return None
    value = values[0]
    if len(values) > 1 or not value or len(value) > ON_BEHALF_OF_MAX or not value.isprintable():
        raise ValidationFailed(
            "X-On-Behalf-Of must be one printable value of at most 200 characters.",
            errors=[{"loc": ["header", ON_BEHALF_OF], "msg": "printable, 1 to 200 characters"}],
        )
    return value


async def get_principal(request: Request, session: SessionDep) -> Principal:
    """Authenticate the request with its bearer access token.

    After the token (cached once verified), one indexed primary-key query reads the
    client's standing and rate limit. That query is what makes ``tellonce clients
    disable`` take effect on the very next request in every process and replica, with
    no invalidation messages; it runs on the request's own session and commits at once,
    so the connection goes back to the pool before the handler runs. ``bench/auth.py``
    measures it against the cached verification.
    """
    with tracing.span("auth"):
        return await _authenticate(request, session)


async def _authenticate(request: Request, session: AsyncSession) -> Principal:
    auth = get_auth(request)
    token = _bearer_token(request)
    try:
        verified = auth.verifier.verify(token)
    except TokenInvalid as exc:
        raise InvalidToken(str(exc)) from None
    # The revocation epoch moves whenever a policy changes or a client is disabled, in
    # any process. A client's standing read under the current epoch is still true, so it
    # is read from the database only when the epoch has moved since.
    epoch = await policy_epoch.epoch_key(await session.connection())
    request.state.epoch_key = epoch
    status = auth.standing.get(verified.client_id, epoch)
    if status is None:
        status = await auth_service.client_status(session, verified.client_id)
        auth.standing.put(verified.client_id, epoch, status)
    # Hand the connection back now: the rest of the request (decisions, decryption, the
    # wait for a durable audit entry) must not hold a pooled connection it does not use.
    await session.commit()
    if status is None or status.disabled:
        # The cached entry may stay: this check runs on every request, cached or not.
        raise InvalidToken("The client is disabled or no longer registered.")
    wait = auth.limiter.take(verified.client_id, status.rate_per_second, status.rate_burst)
    if wait is not None:
        raise TooManyRequests(retry_after_seconds(wait), "This client is over its request rate; retry later.")
    return Principal(
        client_id=verified.client_id,
        department=verified.department,
        roles=verified.roles,
        scopes=verified.scopes,
        on_behalf_of=_on_behalf_of(request),
    )


def require(*scopes: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency that authenticates and then demands every one of ``scopes`` (403 if missing)."""
    needed = frozenset(scopes)

    async def dependency(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
        missing = needed - principal.scopes
        if missing:
            raise Forbidden(f"This call needs the scope(s): {', '.join(sorted(missing))}.")
        return principal

    # Read by the OpenAPI document (service/openapi.py) to declare each route's scopes.
    dependency.required_scopes = needed  # type: ignore[attr-defined]
    return dependency


async def optional_principal(request: Request, session: SessionDep) -> Principal | None:
    """The caller if it sent a token, else None: for endpoints an operator may make public."""
    if "authorization" not in request.headers:
        return None
    return await get_principal(request, session)


async def any_client(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
    """Any authenticated client, whatever its roles (the catalog is open to all of them)."""
    return principal


AnyClient = Annotated[Principal, Depends(any_client)]
