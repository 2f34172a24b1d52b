"""The notice worker with about a thousand cases waiting, closed at once: cases are read a
chunk at a time and one round releases the held notices of at most ``CASES_PER_ROUND``
closed cases, the rest in the rounds straight after, so no statement names more cases than
SQLite's limit on expression depth (1000) allows and every round moves on."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from service.audit.models import AuditEntryRow
from service.cases import repository as cases_repository
from service.cases.models import Case
from service.events.models import ACCESS_RECORDED, HeldNotice, NoticeState, OutboxEvent
from service.events.notices import CASES_PER_ROUND, NoticeWorker
from service.policy.terms import AgreementTerms

CASES = 1000
NOW = datetime(2026, 6, 1, 12, tzinfo=UTC)


@pytest.fixture
async def closed_cases(events_engine: AsyncEngine) -> AsyncIterator[list[tuple[str, str]]]:
    """A thousand closed cases, each with one notice held for it; the worker's position
    after every audit entry, so its rounds only release."""
    keys = [("revenue", f"CASE-{n:04d}") for n in range(CASES)]
    async with events_engine.begin() as conn:
        await conn.execute(delete(HeldNotice))
        await conn.execute(delete(Case))
        newest = (await conn.execute(select(func.max(AuditEntryRow.id)))).scalar() or 0
        await conn.execute(update(NoticeState).values(last_entry_id=newest))
        closed_at = NOW - timedelta(hours=1)
        await conn.execute(
            insert(Case),
            [
                {
                    "department": d,
                    "case_ref": r,
                    "opened_at": closed_at,
                    "closed_at": closed_at,
                    "closed_by": "t",
                }
                for d, r in keys
            ],
        )
        await conn.execute(
            insert(HeldNotice),
            [
                {
                    "entry_id": 10**12 + n,
                    "citizen_id": str(uuid.uuid4()),
                    "department": d,
                    "case_ref": r,
                    "fields": ["given_name"],
                    "detail": {"department": d, "action": "read", "purpose": "fraud-investigation"},
                    "accessed_at": NOW - timedelta(days=1),
                    "disclose_by": NOW + timedelta(days=29),
                }
                for n, (d, r) in enumerate(keys)
            ],
        )
    yield keys
    async with events_engine.begin() as conn:
        await conn.execute(delete(HeldNotice))
        await conn.execute(delete(Case))


class TestManyClosedCases:
    async def test_closed_at_reads_a_thousand_cases(
        self, events_engine: AsyncEngine, closed_cases: list[tuple[str, str]]
    ) -> None:
        async with events_engine.connect() as conn:
            closed = await cases_repository.closed_at(conn, [*closed_cases, ("revenue", "NEVER-OPENED")])
        assert sorted(closed) == sorted(closed_cases)

    async def test_each_round_releases_a_chunk_of_cases_until_all_are_told(
        self, events_engine: AsyncEngine, closed_cases: list[tuple[str, str]]
    ) -> None:
        worker = NoticeWorker(events_engine, AgreementTerms(), interval=0)
        rounds = []
        while added := await worker.run_once(NOW):
            rounds.append(added)
        assert rounds == [CASES_PER_ROUND] * (CASES // CASES_PER_ROUND)
        async with events_engine.connect() as conn:
            told = (
                await conn.execute(select(OutboxEvent.detail).where(OutboxEvent.type == ACCESS_RECORDED))
            ).scalars()
            assert sorted(d["disclosed_by"] for d in told) == ["case-closed"] * len(closed_cases)
            waiting = await conn.execute(select(func.count()).where(HeldNotice.released_at.is_(None)))
            assert waiting.scalar_one() == 0

    async def test_a_thousand_open_cases_waiting_do_not_stop_a_notice_due_by_its_delay(
        self, events_engine: AsyncEngine, closed_cases: list[tuple[str, str]]
    ) -> None:
        async with events_engine.begin() as conn:
            await conn.execute(update(Case).values(closed_at=None, closed_by=None))
            await conn.execute(
                update(HeldNotice)
                .where(HeldNotice.entry_id == 10**12)
                .values(disclose_by=NOW - timedelta(seconds=1))
            )
        worker = NoticeWorker(events_engine, AgreementTerms(), interval=0)
        assert await worker.run_once(NOW) == 1
        assert await worker.run_once(NOW) == 0
        async with events_engine.connect() as conn:
            (told,) = (
                await conn.execute(select(OutboxEvent.detail).where(OutboxEvent.type == ACCESS_RECORDED))
            ).scalars()
        assert told["disclosed_by"] == "max-delay"
        assert len(closed_cases) == CASES
