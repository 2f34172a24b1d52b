"""The caller of a request, and the scopes an endpoint requires.

``get_principal`` is the single place a request is authenticated. Until the
authentication issue lands it refuses everything (default deny); tests act as a client
by overriding it (``tests/fixtures/auth.py``). Endpoints declare what they need with
``require("scope", ...)``.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import Depends, Request

from service.auth.scopes import scopes_for
from service.errors import Forbidden, Unauthenticated


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

    def has_role(self, role: str) -> bool:
        return role in self.roles


async def get_principal(request: Request) -> Principal:  # noqa: ARG001
    """Authenticate the request. Replaced by the token check of the auth domain."""
    raise Unauthenticated("A bearer access token is required.")


def require(*scopes: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency that authenticates and then demands every one of ``scopes`` (403 if missing)."""
    needed = frozenset(scopes)

    async def dependency(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
        missing = needed - principal.scopes
        if missing:
            raise Forbidden(f"This call needs the scope(s): {', '.join(sorted(missing))}.")
        return principal

    return dependency


# The catalog is public to every authenticated client. Until authentication lands the
# foundation serves it openly; the auth issue points this at ``get_principal``.
ANONYMOUS = Principal(client_id="anonymous", department="")


async def any_client() -> Principal:
    return ANONYMOUS


AnyClient = Annotated[Principal, Depends(any_client)]
