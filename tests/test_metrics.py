"""/metrics beyond HTTP: audit-writer batches and failures, sequencer lag, outbox backlog,
webhook deliveries by status, and database pool use, against a real app and database."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from service.app import create_app
from service.audit.errors import AuditUnavailable
from service.config import Settings
from service.db import utcnow
from service.events.models import Delivery, OutboxEvent, Subscription
from tests.fixtures.audit import make_entry


@pytest.fixture
async def live_app(settings: Settings, scratch_database: str) -> AsyncIterator[FastAPI]:
    """The whole app on its own committed database, workers off (so nothing is sequenced)."""
    application = create_app(
        settings.model_copy(update={"database_url": scratch_database, "run_workers": False})
    )
    async with application.router.lifespan_context(application):
        yield application


async def scrape(app: FastAPI) -> str:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        response = await http.get("/metrics")
    assert response.status_code == 200
    return response.text


def value(text: str, sample: str) -> float:
    match = re.search(rf"^{re.escape(sample)} (\S+)$", text, flags=re.MULTILINE)
    assert match is not None, f"{sample} not in /metrics"
    return float(match.group(1))


class TestAuditWriterMetrics:
    async def test_batches_and_failures_are_counted(self, live_app: FastAPI) -> None:
        writer = live_app.state.audit_writer
        await writer.append_many([make_entry(), make_entry(), make_entry()])
        text = await scrape(live_app)
        assert value(text, "tellonce_audit_writer_batch_entries_count") == 1
        assert value(text, "tellonce_audit_writer_batch_entries_sum") == 3
        assert value(text, "tellonce_audit_batches_failed_total") == 0

        async def refuse(_conn: AsyncConnection) -> None:
            raise RuntimeError("disk full")

        writer.before_commit = refuse
        with pytest.raises(AuditUnavailable):
            await writer.append(make_entry())
        writer.before_commit = None
        text = await scrape(live_app)
        assert value(text, "tellonce_audit_batches_failed_total") == 1
        assert value(text, "tellonce_audit_writer_batch_entries_count") == 1

    async def test_sequencer_lag_counts_entries_not_in_the_tree(self, live_app: FastAPI) -> None:
        assert value(await scrape(live_app), "tellonce_audit_sequencer_lag_entries") == 0
        await live_app.state.audit_writer.append_many([make_entry() for _ in range(4)])
        assert value(await scrape(live_app), "tellonce_audit_sequencer_lag_entries") == 4


class TestEventMetrics:
    async def test_outbox_backlog_and_deliveries_by_status(self, live_app: FastAPI) -> None:
        now = utcnow()
        async with live_app.state.database.engine.begin() as conn:
            positions = []
            for _ in range(3):
                result = await conn.execute(
                    insert(OutboxEvent).values(
                        event_id=str(uuid.uuid4()),
                        citizen_id="c-1",
                        fields=["address"],
                        owner="council",
                        occurred_at=now,
                    )
                )
                positions.append(result.inserted_primary_key[0])
            subscription = str(uuid.uuid4())
            await conn.execute(
                insert(Subscription).values(
                    id=subscription,
                    department="welfare",
                    client_id="welfare-consumer",
                    fields=["address"],
                    purpose="benefit-eligibility",
                    webhook_url="https://welfare.example/hook",
                    start_position=0,
                    fanout_position=positions[0],
                    status="active",
                    created_at=now,
                )
            )
            for position, status in zip(positions, ("dead", "dead", "pending"), strict=True):
                await conn.execute(
                    insert(Delivery).values(
                        id=str(uuid.uuid4()),
                        subscription_id=subscription,
                        event_position=position,
                        status=status,
                        next_attempt_at=now + timedelta(minutes=5),
                        created_at=now,
                    )
                )
        text = await scrape(live_app)
        # Fanned out up to the first event: two of the three are still waiting.
        assert value(text, "tellonce_events_outbox_backlog") == 2
        assert value(text, 'tellonce_webhook_deliveries{status="dead"}') == 2
        assert value(text, 'tellonce_webhook_deliveries{status="pending"}') == 1


class TestPoolMetrics:
    async def test_connections_in_use_are_reported(self, live_app: FastAPI) -> None:
        async with live_app.state.database.engine.connect():
            held = value(await scrape(live_app), 'tellonce_db_pool_connections_in_use{pool="requests"}')
        assert held >= 1

    async def test_the_audit_writer_reports_its_connection_while_a_batch_is_open(
        self, live_app: FastAPI
    ) -> None:
        """On SQLite the writer holds one connection of its own, not one of its pool: the
        gauge reads it while a batch's transaction is open, and 0 once it committed."""
        sample = 'tellonce_db_pool_connections_in_use{pool="audit_writer"}'
        writer = live_app.state.audit_writer
        assert value(await scrape(live_app), sample) == 0
        seen: list[float] = []

        async def scrape_inside(_conn: AsyncConnection) -> None:
            seen.append(value(await scrape(live_app), sample))

        writer.before_commit = scrape_inside
        try:
            await writer.append(make_entry())
        finally:
            writer.before_commit = None
        assert seen == [1]
        assert value(await scrape(live_app), sample) == 0
