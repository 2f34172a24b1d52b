"""The transactional outbox: an event exists exactly when its write committed."""

from __future__ import annotations

import itertools

import pytest
from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from service.events import repository
from service.events import service as events_service
from service.events.models import OutboxEvent
from service.events.service import EventsRuntime
from tests.events.conftest import add_citizen, emit


async def _position(engine: AsyncEngine, event_id: str) -> int:
    async with engine.connect() as conn:
        statement = select(OutboxEvent.position).where(OutboxEvent.event_id == event_id)
        return int((await conn.execute(statement)).scalar_one())


async def _count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(select(func.count()).select_from(OutboxEvent))).scalar_one())


class TestRecordChange:
    async def test_committed_change_is_in_the_outbox_without_values(
        self, runtime: EventsRuntime, events_engine: AsyncEngine
    ) -> None:
        citizen = await add_citizen(events_engine)
        event_id = await emit(runtime, citizen, ["address", "given_name"], "register")
        async with events_engine.connect() as conn:
            rows = await repository.events_after(conn, 0, 10)
        assert [(r.event_id, r.citizen_id, r.fields, r.owner) for r in rows] == [
            (event_id, citizen, ["address", "given_name"], "register")
        ]
        assert rows[0].occurred_at.tzinfo is not None

    async def test_rolled_back_write_emits_nothing(
        self, runtime: EventsRuntime, events_engine: AsyncEngine
    ) -> None:
        citizen = await add_citizen(events_engine)

        class WriteFailed(Exception):
            pass

        async def write_that_fails() -> None:
            async with events_engine.begin() as conn:
                await events_service.record_change(
                    conn, citizen_id=citizen, fields=["address"], owner="register"
                )
                # The write fails after its event was added: the transaction rolls back.
                raise WriteFailed

        with pytest.raises(WriteFailed):
            await write_that_fails()
        assert await _count(events_engine) == 0
        await emit(runtime, citizen, ["address"], "register")
        assert await _count(events_engine) == 1

    async def test_positions_increase_in_commit_order_and_are_never_reused(
        self, runtime: EventsRuntime, events_engine: AsyncEngine
    ) -> None:
        citizen = await add_citizen(events_engine)
        ids = [await emit(runtime, citizen, ["points"], "dvla") for _ in range(3)]
        # Each event's own position, looked up by id (not through a query that sorts by it).
        positions = [await _position(events_engine, event_id) for event_id in ids]
        assert all(earlier < later for earlier, later in itertools.pairwise(positions))
        # A reader's cursor is a position: one handed out again after the newest event is
        # gone would make a feed skip the new event.
        async with events_engine.begin() as conn:
            await conn.execute(delete(OutboxEvent).where(OutboxEvent.event_id == ids[-1]))
        newest = await emit(runtime, citizen, ["points"], "dvla")
        assert await _position(events_engine, newest) > positions[-1]

    @pytest.mark.parametrize(
        "fields", [{"address": "1 High St"}, "address", [], ["Address!"], ["address", 3]]
    )
    async def test_refuses_anything_but_field_names(self, events_engine: AsyncEngine, fields: object) -> None:
        async with events_engine.begin() as conn:
            with pytest.raises((TypeError, ValueError)):
                await events_service.record_change(
                    conn,
                    citizen_id="c",
                    fields=fields,  # type: ignore[arg-type]
                    owner="register",
                )
        assert await _count(events_engine) == 0
