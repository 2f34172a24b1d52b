"""Who sees what: every visibility question the API and the console ask, answered once.

Decided on scopes, never on roles (``scopes.py`` maps roles to scopes), so a token's
scopes and a console sign-in's roles give the same answers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from service.errors import InsufficientScope

if TYPE_CHECKING:
    from service.auth.dependencies import Principal

SEES_ALL = "audit:read"
READS_OWN_AUDIT = "audit:read-own"
EXPORTS_AUDIT = "audit:export"
WRITES_AGREEMENTS = "policies:write"


def sees_all(principal: Principal) -> bool:
    """An auditor sees every agreement and every audit entry; anyone else only what touches
    its own department."""
    return SEES_ALL in principal.scopes


def owner_scope(principal: Principal) -> str | None:
    """The owning department ``principal`` is confined to, or ``None`` when it sees all."""
    return None if sees_all(principal) else principal.department


def sees_agreement(principal: Principal, owner: str) -> bool:
    """Whether an agreement of ``owner`` is visible at all (otherwise it is reported missing)."""
    return sees_all(principal) or owner == principal.department


def may_write_agreements(principal: Principal) -> bool:
    """Creates, changes and revokes its own department's agreements (a data owner)."""
    return WRITES_AGREEMENTS in principal.scopes


def changes_agreement(principal: Principal, owner: str) -> bool:
    """Only the owning department changes or revokes its agreements, auditors included."""
    return owner == principal.department


def may_explain(principal: Principal, consumer: str, field_owners: list[str | None]) -> bool:
    """A data owner explains decisions on its own fields, or for its own department as consumer."""
    if sees_all(principal) or consumer == principal.department:
        return True
    return all(owner == principal.department for owner in field_owners)


def may_read_audit(principal: Principal) -> bool:
    """Reads audit entries and usage reports: all of them, or those of its own fields."""
    return bool(principal.scopes & {SEES_ALL, READS_OWN_AUDIT})


def require_audit_reader(principal: Principal) -> Principal:
    if not may_read_audit(principal):
        raise InsufficientScope(
            f"This call needs the scope {SEES_ALL} or {READS_OWN_AUDIT}.", (SEES_ALL, READS_OWN_AUDIT)
        )
    return principal


def may_export_audit(principal: Principal) -> bool:
    return EXPORTS_AUDIT in principal.scopes
