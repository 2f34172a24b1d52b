"""Several dispatchers on one PostgreSQL: each delivery is attempted by exactly one of them."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from service.db import create_engine
from service.events import service as events_service
from service.events.dispatcher import Dispatcher
from service.events.models import Delivery
from service.events.notifier import EventNotifier
from service.events.service import EventsRuntime
from tests.events.conftest import add_citizen, running
from tests.fixtures.auth import act_as
from tests.fixtures.webhooks import WebhookReceiver

EVENTS = 1000


@pytest.fixture
async def second_engine(on_postgres: bool, events_database_url: str) -> AsyncIterator[AsyncEngine]:
    if not on_postgres:
        pytest.skip(
            "needs PostgreSQL: concurrent dispatchers claim with FOR UPDATE SKIP LOCKED; "
            "SQLite has a single writer and runs one dispatcher"
        )
    engine = create_engine(events_database_url)
    yield engine
    await engine.dispose()


@pytest.mark.postgres
class TestTwoDispatchers:
    async def test_deliver_1000_events_exactly_once(
        self,
        second_engine: AsyncEngine,
        events_app: FastAPI,
        api: httpx.AsyncClient,
        runtime: EventsRuntime,
        events_engine: AsyncEngine,
        receiver: WebhookReceiver,
    ) -> None:
        act_as(events_app, "dvla", "consumer")
        response = await api.post(
            "/v1/subscriptions",
            json={
                "fields": ["date_of_death"],
                "purpose": "licence-administration",
                "webhook_url": receiver.url,
            },
        )
        assert response.status_code == 201, response.text
        citizens = [await add_citizen(events_engine) for _ in range(20)]
        sent: list[str] = []
        for first in range(0, EVENTS, 100):
            async with events_engine.begin() as conn:
                for n in range(first, first + 100):
                    sent.append(
                        await events_service.record_change(
                            conn, citizen_id=citizens[n % 20], fields=["date_of_death"], owner="register"
                        )
                    )
        # Two dispatchers, each with its own connection pool and its own wake-ups, as two
        # worker processes would have.
        other = EventsRuntime(
            settings=runtime.settings,
            engine=second_engine,
            policy=runtime.policy,
            audit=runtime.audit,
            notifier=EventNotifier(),
        )
        one, two = Dispatcher(runtime, batch_size=25), Dispatcher(other, batch_size=25)
        try:
            async with running(one), running(two):
                await receiver.until(EVENTS, timeout=120)
        finally:
            await one.aclose()
            await two.aclose()
        counts = receiver.accepted_ids()
        assert len(counts) == EVENTS
        assert set(counts.values()) == {1}
        assert len(receiver.received) == EVENTS
        delivered_events = {r.body.decode().split('"event_id":"')[1][:36] for r in receiver.received}
        assert delivered_events == set(sent)
        # Each attempt was made by exactly one dispatcher, and both did their share.
        assert one.attempts_made + two.attempts_made == EVENTS
        assert one.attempts_made > 0
        assert two.attempts_made > 0
        async with events_engine.connect() as conn:
            rows = (
                await conn.execute(
                    select(Delivery.status, Delivery.attempts, func.count()).group_by(
                        Delivery.status, Delivery.attempts
                    )
                )
            ).all()
        assert [tuple(row) for row in rows] == [("delivered", 1, EVENTS)]
