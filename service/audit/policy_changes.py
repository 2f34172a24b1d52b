"""Policy and catalog changes land in the same audit log as every access.

Each change is appended inside the transaction that makes it, so a new agreement version
(or catalog) and its entry commit together or not at all.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from service.audit.entries import catalog_change_entry, policy_change_entry
from service.audit.writer import append_in_transaction
from service.catalog import service as catalog_service
from service.policy import service as policy_service


async def audit_policy_change(session: AsyncSession, change: policy_service.PolicyChange) -> None:
    await append_in_transaction(await session.connection(), policy_change_entry(change))


async def audit_catalog_change(session: AsyncSession, change: catalog_service.CatalogChange) -> None:
    await append_in_transaction(await session.connection(), catalog_change_entry(change))


def connect_policy_changes() -> None:
    """Audit every policy and catalog change, in whatever process makes it (server or CLI)."""
    if audit_policy_change not in policy_service.on_policy_change:
        policy_service.on_policy_change.append(audit_policy_change)
    if audit_catalog_change not in catalog_service.on_catalog_change:
        catalog_service.on_catalog_change.append(audit_catalog_change)
