"""Policy changes and key operations land in the same audit log as every access.

Policy changes are appended inside the transaction that makes them, so a change and its
entry commit together. Key events fire inside the transactions that cause them (a KEK
made by a first write, keys shredded by an erasure); appending through the batched writer
there would wait on the very lock that transaction holds on SQLite, so they are queued
and appended just after, through the writer (in the server) or in one transaction of
their own (in the CLI).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from service.audit.models import AuditEntryRow
from service.audit.schemas import AuditEntry, Reason
from service.audit.service import append_in_transaction
from service.audit.writer import AuditWriter
from service.crypto.keyring import KeyEvent
from service.db import utcnow
from service.observability import current_request_id
from service.policy import service as policy_service
from service.policy.simulate import RecordedRequest

logger = logging.getLogger("tellonce.audit.hooks")
# Key events while serving a request (a first KEK, an erasure's shredding) are the service's own.
SERVICE_ACTOR = "tellonce-service"


def policy_change_entry(change: policy_service.PolicyChange) -> AuditEntry:
    return AuditEntry(
        time=utcnow().isoformat(),
        request_id=current_request_id(),
        client_id=change.author,
        department=change.owner,
        action="policy-change",
        owners=[change.owner],
        decision="permit",
        reasons=[
            Reason(
                field="",
                effect=change.status,
                agreement=change.agreement_id,
                version=change.version,
                reason=change.reason,
            )
        ],
        status=200,
    )


async def audit_policy_change(session: AsyncSession, change: policy_service.PolicyChange) -> None:
    await append_in_transaction(await session.connection(), policy_change_entry(change))


def key_event_entry(event: KeyEvent, actor: str = SERVICE_ACTOR) -> AuditEntry:
    """``actor``: the operator's ``operator:NAME`` for CLI commands; the service's own name
    for keys made or shredded while serving a request."""
    # The detail holds versions, counts and pseudonymous citizen ids; never key material.
    detail = ", ".join(f"{key}={value}" for key, value in sorted(event.detail.items()))
    department = event.department or ""
    return AuditEntry(
        time=utcnow().isoformat(),
        request_id=current_request_id(),
        client_id=actor,
        department=department,
        action="key-operation",
        citizen_id=str(event.detail["citizen_id"]) if "citizen_id" in event.detail else None,
        owners=[department] if department else [],
        decision="permit",
        reasons=[Reason(field="", effect="permit", reason=f"{event.action}: {detail}")],
        status=200,
    )


class KeyEventsToWriter:
    """The server's key-event hook: each event is appended through the batched writer
    right after the operation, on a task of its own."""

    def __init__(self, writer: AuditWriter) -> None:
        self.writer = writer
        self.pending: set[asyncio.Task[Any]] = set()

    async def __call__(self, event: KeyEvent) -> None:
        task = asyncio.get_running_loop().create_task(self._append(event))
        self.pending.add(task)
        task.add_done_callback(self.pending.discard)

    async def _append(self, event: KeyEvent) -> None:
        try:
            await self.writer.append(key_event_entry(event))
        except Exception:
            logger.exception("a key operation could not be audited", extra={"action": event.action})

    async def drain(self) -> None:
        if self.pending:
            await asyncio.gather(*self.pending, return_exceptions=True)


def operator_entry(actor: str, action: str, department: str, what: str) -> AuditEntry:
    """An operator command that changed who may call the service or what signs tokens."""
    return AuditEntry.model_validate(
        {
            "time": utcnow().isoformat(),
            "request_id": current_request_id(),
            "client_id": actor,
            "department": department,
            "action": action,
            "owners": [],
            "decision": "permit",
            "reasons": [{"field": "", "effect": "permit", "reason": what}],
            "status": 200,
        }
    )


class KeyEventsCollected:
    """The CLI's key-event hook: events are kept, then appended in one transaction under
    the operator who ran the command."""

    def __init__(self, actor: str) -> None:
        self.actor = actor
        self.events: list[KeyEvent] = []

    async def __call__(self, event: KeyEvent) -> None:
        self.events.append(event)

    async def flush(self, engine: AsyncEngine) -> int:
        events: Sequence[KeyEvent] = list(self.events)
        self.events.clear()
        if events:
            async with engine.begin() as conn:
                for event in events:
                    await append_in_transaction(conn, key_event_entry(event, self.actor))
        return len(events)


def connect_policy_changes() -> None:
    """Audit every policy change, in whatever process makes it (server or CLI)."""
    if audit_policy_change not in policy_service.on_policy_change:
        policy_service.on_policy_change.append(audit_policy_change)


# --- simulate replays the audited requests ------------------------------------------------

# Audit actions that were policy decisions, and the policy action each one asked for.
REPLAYED_ACTIONS = {
    "read": "read",
    "batch-get": "read",
    "lookup": "lookup",
    "verify": "verify",
    "history": "history",
    "write": "write",
    "subscribe": "subscribe",
}


class AuditedRequests:
    """The audit store as simulate's source of past requests, paged by entry id.

    Entries do not keep the citizen's status at the time, so conditions on it are
    replayed as if the status were unknown (which fails closed); the report says so.
    """

    def __init__(self, engine: AsyncEngine, page_size: int = 2000) -> None:
        self.engine = engine
        self.page_size = page_size

    async def recorded_requests(self, since: datetime | None) -> AsyncIterator[RecordedRequest]:
        table = AuditEntryRow.__table__
        last_id = 0
        while True:
            query = (
                select(table.c.id, table.c.canonical)
                .where(table.c.id > last_id, table.c.action.in_(list(REPLAYED_ACTIONS)))
                .order_by(table.c.id)
                .limit(self.page_size)
            )
            if since is not None:
                query = query.where(table.c.time >= since)
            async with self.engine.connect() as conn:
                rows = (await conn.execute(query)).all()
            if not rows:
                return
            for row in rows:
                last_id = row.id
                entry = json.loads(row.canonical)
                if not entry.get("purpose") or not entry.get("fields_requested"):
                    continue
                yield RecordedRequest(
                    consumer=entry["department"],
                    action=REPLAYED_ACTIONS[entry["action"]],
                    fields=tuple(entry["fields_requested"]),
                    purpose=entry["purpose"],
                    case_ref=entry.get("case_ref"),
                    citizen_status=None,
                    time=datetime.fromisoformat(entry["time"]),
                )
