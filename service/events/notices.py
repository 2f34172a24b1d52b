"""Access notices: each access that released a citizen's data, told to the citizen portal.

A worker step (run by the dispatcher before each fan-out) reads the audit entries the
sequencer has put in the tree, in id order after its own position, and turns each
released read, batch-get item, lookup, verification or history read into one
``access.recorded`` event in the outbox: the department, the action, the field names,
the purpose, the basis and legal basis, and the time; never a value. The read path
does nothing more than append its audit entry, as before.

Exactly once: the notices and the worker's new position commit in one transaction, under
the lock of the worker's row, on condition that the position is still the one the notices
were made from. A round reads the entries and makes their notices first, without the
lock, so the audit writers of the serving processes (on SQLite, at the same one write
lock) wait for its inserts only; a round with nothing to add moves the position in one
conditional statement instead. Notices are made only while some portal subscribes;
what happens before that is not told (the access log has it).

An access under delayed disclosure (``service.cases.rules``) is held instead, and added
to the outbox when its case is closed or its maximum delay has passed, with its original
time and ``disclosed_at``: the citizen is told of it then, and never before.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.audit import repository as audit_repository
from service.cases import repository as cases_repository
from service.cases import rules
from service.events import repository
from service.events.models import ACCESS_RECORDED
from service.policy.terms import AgreementTerms, Cited, Terms

# The audit actions that release a citizen's data to a department.
NOTICE_ACTIONS = ("read", "batch-get", "lookup", "verify", "history")
NOTICE_BATCH = 1000
# Closed cases whose held notices one round releases at most: each is named in the
# statement that finds them (``repository.due_notices``). The rest are released by the
# rounds straight after; a case is left out once none of its notices waits.
CASES_PER_ROUND = cases_repository.CASES_PER_QUERY
# Rounds are at least this far apart while they keep up, so under steady reads one round
# takes many entries in one transaction instead of a transaction per few reads (on SQLite
# each is a turn at the one write lock the audit writer needs too). A notice waits at most
# this much longer.
ROUND_INTERVAL_SECONDS = 0.25
# When agreements of several bases permitted one access, the one the citizen has most say
# over is named: the citizen can act on a consent or an objection.
_BASIS_ORDER = ("consent", "objectable", "statutory")


def basis_of(cites: Iterable[Cited], terms: Mapping[Cited, Terms]) -> str:
    """The basis of the agreements an entry cites (``rules.cited``), which permitted it;
    statutory when none did (an owner reading its own fields)."""
    bases = {terms[c].basis for c in cites}
    return next((b for b in _BASIS_ORDER if b in bases), "statutory")


def notice_detail(entry: Mapping[str, Any], basis: str, shown: rules.Shown) -> dict[str, Any]:
    """What a notice says besides the citizen, the fields and the time: no value, no officer."""
    return {
        "department": entry["department"],
        "action": entry["action"],
        "purpose": entry.get("purpose"),
        "basis": basis,
        "legal_basis": list(entry.get("legal_basis") or []),
        "disclosed_at": shown.disclosed_at.isoformat() if shown.disclosed_at else None,
        "disclosed_by": shown.disclosed_by,
    }


def _notice_row(
    citizen_id: str, fields: Sequence[str], at: datetime, detail: dict[str, Any]
) -> dict[str, Any]:
    """An outbox row of type ``access.recorded``."""
    return {
        "event_id": str(uuid.uuid4()),
        "citizen_id": citizen_id,
        "fields": list(fields),
        "owner": "",
        "occurred_at": at,
        "type": ACCESS_RECORDED,
        "detail": detail,
    }


@dataclass(frozen=True)
class _Made:
    """A round's notices made from the audit: the worker's position after them, the
    notices for the outbox, and those held under delayed disclosure."""

    position: int
    notices: list[dict[str, Any]]
    held: list[dict[str, Any]]


class NoticeWorker:
    """Turns audit entries into access notices and releases held ones; ``run_once`` is one
    round. Several may run against one database: rounds take turns on the worker's row."""

    def __init__(
        self, engine: AsyncEngine, terms: AgreementTerms, interval: float = ROUND_INTERVAL_SECONDS
    ) -> None:
        self.engine = engine
        self._autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        self.terms = terms
        self.interval = interval
        self._next_round = 0.0

    async def run_once(self, now: datetime) -> int:
        """One round, unless the last ended less than ``interval`` ago with nothing left
        over; returns how many notices reached the outbox."""
        if time.monotonic() < self._next_round:
            return 0
        self._next_round = time.monotonic() + self.interval
        async with self.engine.connect() as conn:
            # Read and made first, without the lock; an idle worker writes nothing.
            position = await repository.notice_position(conn)
            watermark = await audit_repository.sequenced_watermark(conn)
            closed = await cases_repository.closed_at(conn, await repository.waiting_cases(conn))
            # The cases closed first are released first.
            releasing = sorted(closed, key=lambda case: (closed[case], case))[:CASES_PER_ROUND]
            due = await repository.due_notices(conn, now, releasing, 1)
            made = await self._from_audit(conn, position, watermark, now) if position < watermark else None
            await conn.rollback()
        if made is None and not due:
            return 0
        if made is not None and not made.notices and not made.held and not due:
            # Nothing to tell (no portal subscribes, or the entries released nothing): the
            # position moves past the entries in one statement that commits by itself, on
            # condition that it is still the one read, so the write lock (on SQLite the one
            # the audit writers of the serving processes wait for) is held for that
            # statement alone, not through a round's transaction of several.
            moved = await repository.advance_notice_position(self._autocommit, position, made.position)
            if not moved or made.position < watermark:
                self._next_round = 0.0
            return 0
        added = 0
        async with self.engine.begin() as conn:
            if await repository.lock_notice_state(conn) != position:
                # Another worker passed these entries meanwhile: the next round starts after it.
                self._next_round = 0.0
                return 0
            await repository.lock_outbox(conn)
            if made is not None:
                await repository.set_notice_position(conn, made.position)
                await repository.insert_events(conn, made.notices)
                await repository.hold_notices(conn, made.held)
                added += len(made.notices)
                if made.position < watermark:
                    self._next_round = 0.0  # a full batch: the rest at once
            added += await self._release(conn, closed, releasing, now)
            if len(closed) > len(releasing):
                self._next_round = 0.0  # more closed cases than a round releases: the rest at once
            if added:
                await repository.notify_on_commit(conn)
        return added

    async def _from_audit(self, conn: AsyncConnection, position: int, watermark: int, now: datetime) -> _Made:
        """The notices and held notices of the sequenced entries after ``position`` (a batch
        at most), and the position after them. Reads only."""
        rows = await audit_repository.sequenced_releases(
            conn, position, watermark, NOTICE_ACTIONS, NOTICE_BATCH
        )
        after = rows[-1][0] if len(rows) == NOTICE_BATCH else watermark
        if not rows or not await repository.access_subscribed(conn):
            return _Made(after, [], [])
        parsed = [(entry_id, orjson.loads(canonical)) for entry_id, canonical in rows]
        # Each entry's cited agreement versions, worked out once for its terms, its delay
        # and its basis.
        entries = [
            (i, e, rules.cited(e)) for i, e in parsed if e.get("citizen_id") and e.get("fields_released")
        ]
        terms = await self.terms.of(conn, {c for _i, _e, cites in entries for c in cites})
        delays = {i: rules.longest_delay(cites, terms, rules.holds(e)) for i, e, cites in entries}
        closed = await cases_repository.closed_at(
            conn,
            {(e["department"], e["case_ref"]) for i, e, _c in entries if delays[i] and e.get("case_ref")},
        )
        notices: list[dict[str, Any]] = []
        held: list[dict[str, Any]] = []
        for entry_id, entry, cites in entries:
            at, delay = rules.entry_time(entry), delays[entry_id]
            case = (entry["department"], entry.get("case_ref") or "")
            shown = rules.shown(at, delay, closed.get(case), now)
            detail = notice_detail(entry, basis_of(cites, terms), shown)
            if shown.visible:
                notices.append(_notice_row(entry["citizen_id"], entry["fields_released"], at, detail))
            elif delay is not None:
                held.append(
                    {
                        "entry_id": entry_id,
                        "citizen_id": entry["citizen_id"],
                        "department": entry["department"],
                        "case_ref": entry.get("case_ref"),
                        "fields": entry["fields_released"],
                        "detail": detail,
                        "accessed_at": at,
                        "disclose_by": at + delay,
                    }
                )
        return _Made(after, notices, held)

    async def _release(
        self,
        conn: AsyncConnection,
        closed: Mapping[cases_repository.CaseKey, datetime],
        releasing: Sequence[cases_repository.CaseKey],
        now: datetime,
    ) -> int:
        """Add to the outbox the held notices (a batch at most) whose maximum delay has
        passed or whose case is one of ``releasing`` (of ``closed``, the waiting cases
        closed, by when); returns how many."""
        due = await repository.due_notices(conn, now, releasing, NOTICE_BATCH)
        notices: list[dict[str, Any]] = []
        for notice in due:
            shown = rules.shown(
                notice.accessed_at,
                notice.disclose_by - notice.accessed_at,
                closed.get((notice.department, notice.case_ref or "")),
                now,
            )
            detail = notice.detail | {
                "disclosed_at": (shown.disclosed_at or now).isoformat(),
                "disclosed_by": shown.disclosed_by,
            }
            notices.append(_notice_row(notice.citizen_id, notice.fields, notice.accessed_at, detail))
        await repository.insert_events(conn, notices)
        await repository.release_held(conn, [notice.entry_id for notice in due], now)
        return len(due)
