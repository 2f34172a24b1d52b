"""Roles, and the scopes each role carries. Endpoints require scopes, never roles."""

from __future__ import annotations

from typing import Final

ROLE_SCOPES: Final[dict[str, frozenset[str]]] = {
    "consumer": frozenset(
        {
            "citizens:lookup",
            "citizens:read",
            "citizens:verify",
            "citizens:history",
            "events:subscribe",
            "cases:close",
        }
    ),
    "writer": frozenset({"citizens:write"}),
    "registrar": frozenset({"citizens:register", "citizens:erase"}),
    "data-owner": frozenset(
        {"policies:read", "policies:write", "policies:simulate", "decisions:explain", "audit:read-own"}
    ),
    "auditor": frozenset(
        {
            "audit:read",
            "audit:export",
            "audit:verify",
            "policies:read",
            "policies:simulate",
            "decisions:explain",
        }
    ),
    # events:subscribe: access notices (``access.recorded``), through the events API.
    "citizen-portal": frozenset({"citizens:access-log", "citizens:consent", "events:subscribe"}),
    # Departments come from the catalog (policies/), which only the operator applies; a
    # department's admin manages its own clients.
    "admin": frozenset({"admin:clients"}),
}

ROLES: Final[frozenset[str]] = frozenset(ROLE_SCOPES)
ALL_SCOPES: Final[frozenset[str]] = frozenset().union(*ROLE_SCOPES.values())


def scopes_for(roles: frozenset[str] | set[str]) -> frozenset[str]:
    """The union of the scopes of ``roles``; unknown roles carry none."""
    return frozenset().union(*(ROLE_SCOPES.get(role, frozenset()) for role in roles))
