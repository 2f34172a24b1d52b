"""The audit store as the past requests that ``POST /v1/policies/simulate`` replays."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from service.audit.models import AuditEntryRow
from service.audit.schemas import DECIDED_AS
from service.policy.simulate import RecordedRequest

# Audit actions that were policy decisions on a consumer's request, and the policy action
# each one asked for: every decided action but the events' deliveries and feed reads.
REPLAYED_ACTIONS = {
    action: asked for action, asked in DECIDED_AS.items() if action not in {"deliver", "feed"}
}


# The status of an erased citizen, whose requests get nothing under any policy.
ERASED = "erased"


class AuditedRequests:
    """The audit store as simulate's source of past requests, paged by entry id.

    Entries keep the citizen's status when decided (``citizen_status``), so conditions on
    it are replayed with that status. Entries written before the status was recorded have
    none: they are replayed with a null status, as a decision on a citizen whose status is
    not known (``citizen.status == "active"`` is false for them, so it denies).

    Requests for an erased citizen (status ``erased``: each refused with 410, or 404 to a
    caller that may not know it existed) are left out: no agreement could change their
    answer, so a draft would only seem to change them.
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
                if entry.get("citizen_status") == ERASED:
                    continue
                yield RecordedRequest(
                    consumer=entry["department"],
                    action=REPLAYED_ACTIONS[entry["action"]],
                    fields=tuple(entry["fields_requested"]),
                    purpose=entry["purpose"],
                    case_ref=entry.get("case_ref"),
                    citizen_status=entry.get("citizen_status"),
                    time=datetime.fromisoformat(entry["time"]),
                    citizen_id=entry.get("citizen_id"),
                )
