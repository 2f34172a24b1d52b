"""The audit store as the past requests that ``POST /v1/policies/simulate`` replays."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from datetime import datetime

from sqlalchemy import ColumnElement, false, func, or_, select
from sqlalchemy.ext.asyncio import AsyncEngine

from service.audit.models import AuditEntryRow
from service.audit.repository import listing
from service.audit.schemas import DECIDED_AS
from service.policy.simulate import TIME_STEP, RecordedRequest, Window

# Audit actions that were policy decisions on a consumer's request, and the policy action
# each one asked for: every decided action but the events' deliveries and feed reads.
REPLAYED_ACTIONS = {
    action: asked for action, asked in DECIDED_AS.items() if action not in {"deliver", "feed"}
}


# The status of an erased citizen, whose requests get nothing under any policy.
ERASED = "erased"


class AuditedRequests:
    """The audit store as simulate's source of past requests, paged by entry id.

    A window is chosen by the entries' filter columns (action, purpose, owners, time), so
    counting it reads no entry's JSON; only the entries replayed are decoded. Its owners are
    those of the fields each entry asked for, as the entry names them.

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

    @staticmethod
    def _conditions(window: Window, since: datetime | None) -> list[ColumnElement[bool]]:
        table = AuditEntryRow.__table__
        found = [
            table.c.action.in_(list(REPLAYED_ACTIONS)),
            table.c.purpose.is_not(None),
            table.c.purpose != "",
        ]
        if window.owners is not None:
            found.append(or_(false(), *(listing(table.c.owners, owner) for owner in sorted(window.owners))))
        if since is not None:
            found.append(table.c.time >= since)
        return found

    async def count(self, window: Window, at_most: int) -> int:
        table = AuditEntryRow.__table__
        held = select(table.c.id).where(*self._conditions(window, window.since)).limit(at_most).subquery()
        async with self.engine.connect() as conn:
            return int((await conn.execute(select(func.count()).select_from(held))).scalar_one())

    async def since_holding(self, window: Window, at_most: int) -> datetime | None:
        table = AuditEntryRow.__table__
        query = (
            select(table.c.time)
            .where(*self._conditions(window, None))
            .order_by(table.c.time.desc())
            .offset(at_most)
            .limit(1)
        )
        async with self.engine.connect() as conn:
            older: datetime | None = (await conn.execute(query)).scalar()
        return None if older is None else older + TIME_STEP

    async def recorded_requests(self, window: Window) -> AsyncIterator[RecordedRequest]:
        table = AuditEntryRow.__table__
        conditions = self._conditions(window, window.since)
        async with self.engine.connect() as conn:
            # Entries appended while the replay runs are not chased: it ends where the log
            # ended when it began.
            last = (await conn.execute(select(func.max(table.c.id)))).scalar() or 0
        last_id = 0
        while True:
            query = (
                select(table.c.id, table.c.canonical)
                .where(table.c.id > last_id, table.c.id <= last, *conditions)
                .order_by(table.c.id)
                .limit(self.page_size)
            )
            async with self.engine.connect() as conn:
                rows = (await conn.execute(query)).all()
            if not rows:
                return
            for row in rows:
                last_id = row.id
                entry = json.loads(row.canonical)
                if not entry.get("fields_requested"):
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
