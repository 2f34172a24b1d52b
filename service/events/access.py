"""What the events domain asks of policy and of the audit trail.

Two small seams: a ``PolicySource`` that answers "may this department still subscribe to
these fields, for this purpose, for a citizen in this status, now?", and an ``AuditSink``
that returns only once entries are durable. The live ones call ``service.policy`` and the
audit writer; both are imported where they are used, so this domain does not import them
at module load.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

if TYPE_CHECKING:
    from service.policy.service import PolicyHolder


class FieldDecision(Protocol):
    """The parts of ``service.policy.engine.Decision`` the events domain reads."""

    @property
    def field(self) -> str: ...
    @property
    def effect(self) -> str: ...
    @property
    def reason(self) -> str: ...
    @property
    def agreement(self) -> str | None: ...
    @property
    def version(self) -> int | None: ...
    @property
    def legal_basis(self) -> str | None: ...
    @property
    def digest(self) -> str | None: ...


class SubscribeDecider(Protocol):
    """The compiled policy in force, asked about the ``subscribe`` action only."""

    def __call__(
        self,
        department: str,
        fields: Sequence[str],
        purpose: str,
        citizen_status: str | None,
        now: datetime,
    ) -> Mapping[str, FieldDecision]: ...


class PolicySource(Protocol):
    async def current(self, conn: AsyncConnection) -> SubscribeDecider: ...


class AuditSink(Protocol):
    async def record(self, entries: Sequence[dict[str, Any]]) -> None:
        """Return once every entry is durable; raise if they are not (then nothing leaves)."""


class LivePolicy:
    """The policy service's compiled policy, recompiled when the policy epoch moves.

    It keeps its own holder, bound to the one database its runtime uses, so a process that
    talks to two databases (the tests do) never decides with the other one's agreements.
    """

    def __init__(self) -> None:
        self._holder: PolicyHolder | None = None

    async def current(self, conn: AsyncConnection) -> SubscribeDecider:
        from service.policy import service as policy_service
        from service.policy.engine import RequestContext

        if self._holder is None:
            self._holder = policy_service.PolicyHolder()
        policy = await policy_service.current_policy(conn, self._holder)

        def decide(
            department: str,
            fields: Sequence[str],
            purpose: str,
            citizen_status: str | None,
            now: datetime,
        ) -> Mapping[str, FieldDecision]:
            context = RequestContext(purpose=purpose, case_ref=None, time=now, citizen_status=citizen_status)
            decisions: Mapping[str, FieldDecision] = policy.decide(
                department, "subscribe", list(fields), context
            )
            return decisions

        return decide


class AppAuditSink:
    """The app's batched audit writer (``app.state.audit_writer``), looked up at each use so
    the order in which lifecycles start does not matter."""

    def __init__(self, state: Any) -> None:
        self._state = state

    async def record(self, entries: Sequence[dict[str, Any]]) -> None:
        from service.audit.errors import AuditUnavailable
        from service.audit.schemas import AuditEntry

        writer = getattr(self._state, "audit_writer", None)
        if writer is None:
            raise AuditUnavailable("The audit writer is not running; nothing is released.")
        await writer.append_many([AuditEntry.model_validate(entry) for entry in entries])


class OwnAuditSink:
    """A writer of its own, for ``tellonce worker``, which has no app."""

    def __init__(self, engine: AsyncEngine) -> None:
        from service.audit.writer import AuditWriter

        self.writer = AuditWriter(engine)

    async def start(self) -> None:
        await self.writer.start()

    async def stop(self) -> None:
        await self.writer.stop()

    async def record(self, entries: Sequence[dict[str, Any]]) -> None:
        from service.audit.schemas import AuditEntry

        await self.writer.append_many([AuditEntry.model_validate(entry) for entry in entries])


AuditAction = Literal["subscribe", "deliver", "feed"]


def audit_entry(
    *,
    action: AuditAction,
    time: datetime,
    client_id: str,
    department: str,
    citizen_id: str | None,
    owners: Sequence[str],
    requested: Sequence[str],
    decisions: Mapping[str, FieldDecision],
    purpose: str,
    status: int,
    citizen_status: str | None,
    request_id: str | None = None,
    on_behalf_of: str | None = None,
    source: str | None = None,
) -> dict[str, Any]:
    """An audit entry in the shape of ``service.audit.schemas.AuditEntry``. Names, never values."""
    released = [f for f in requested if f in decisions and decisions[f].effect == "permit"]
    if released and len(released) == len(requested):
        decision = "permit"
    elif released:
        decision = "partial"
    else:
        decision = "deny"
    reasons = [
        {
            "field": field,
            "effect": decisions[field].effect,
            "agreement": decisions[field].agreement,
            "version": decisions[field].version,
            "digest": decisions[field].digest,
            "reason": decisions[field].reason,
        }
        for field in requested
        if field in decisions
    ]
    legal_basis = sorted({basis for f in released if (basis := decisions[f].legal_basis)})
    return {
        "time": time.isoformat(),
        "request_id": request_id or uuid.uuid4().hex,
        "client_id": client_id,
        "department": department,
        "on_behalf_of": on_behalf_of,
        "action": action,
        "citizen_id": citizen_id,
        "owners": sorted(set(owners)),
        "fields_requested": list(requested),
        "fields_released": released,
        "decision": decision,
        "reasons": reasons,
        "purpose": purpose,
        "case_ref": None,
        "citizen_status": citizen_status,
        "legal_basis": legal_basis,
        "status": status,
        "source": source,
    }
