"""What the events domain asks of policy and of the audit trail.

Two small seams: a ``PolicySource`` that answers "may this department still subscribe to
these fields, for this purpose, for a citizen in this status, now?", and an ``AuditSink``
that returns only once entries are durable (``record``), or appends them in the caller's
transaction, to commit with the change it makes (``record_in``). The live ones call
``service.policy`` (imported where it is used, as the policy domain's records path imports
this domain) and the audit writer. The entries themselves are built by ``service.audit.entries``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any, Protocol

from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.audit.entries import FieldDecision
from service.audit.errors import AuditUnavailable
from service.audit.schemas import AuditEntry
from service.audit.writer import AuditWriter, append_many_in_transaction

if TYPE_CHECKING:
    from service.policy.service import PolicyHolder


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
    async def record(self, entries: Sequence[AuditEntry]) -> None:
        """Return once every entry is durable; raise if they are not (then nothing leaves)."""

    async def record_in(self, conn: AsyncConnection, entries: Sequence[AuditEntry]) -> None:
        """Append the entries in ``conn``'s transaction, so they commit with the change it
        makes, or neither does; raise if they cannot be written (the caller's transaction
        must then not commit). Call it last before the commit."""


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

    async def record(self, entries: Sequence[AuditEntry]) -> None:
        writer = getattr(self._state, "audit_writer", None)
        if writer is None:
            raise AuditUnavailable("The audit writer is not running; nothing is released.")
        await writer.append_many(entries)

    async def record_in(self, conn: AsyncConnection, entries: Sequence[AuditEntry]) -> None:
        await append_many_in_transaction(conn, entries)


class OwnAuditSink:
    """A writer of its own, for ``tellonce worker``, which has no app."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.writer = AuditWriter(engine)

    async def start(self) -> None:
        await self.writer.start()

    async def stop(self) -> None:
        await self.writer.stop()

    async def record(self, entries: Sequence[AuditEntry]) -> None:
        await self.writer.append_many(entries)

    async def record_in(self, conn: AsyncConnection, entries: Sequence[AuditEntry]) -> None:
        await append_many_in_transaction(conn, entries)
