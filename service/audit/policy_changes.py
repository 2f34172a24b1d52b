"""Policy changes land in the same audit log as every access.

Each change is appended inside the transaction that makes it, so a new agreement version
and its entry commit together or not at all.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from service.audit.entries import policy_change_entry
from service.audit.writer import append_in_transaction
from service.policy import service as policy_service


async def audit_policy_change(session: AsyncSession, change: policy_service.PolicyChange) -> None:
    await append_in_transaction(await session.connection(), policy_change_entry(change))


def connect_policy_changes() -> None:
    """Audit every policy change, in whatever process makes it (server or CLI)."""
    if audit_policy_change not in policy_service.on_policy_change:
        policy_service.on_policy_change.append(audit_policy_change)
