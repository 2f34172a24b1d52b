"""Events tests run against their own committed database: the feed and the dispatcher read
with fresh connections and must see commits, as they do in production.

One scratch database per run (migrated, test catalog stored); every test starts with an
empty outbox and no subscriptions.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from service.app import create_app
from service.audit.schemas import AuditEntry
from service.catalog import service as catalog_service
from service.catalog.loader import load_catalog
from service.config import Settings
from service.db import create_engine, utcnow
from service.errors import ServiceUnavailable
from service.events import service as events_service
from service.events.access import LivePolicy
from service.events.dispatcher import Dispatcher
from service.events.models import Delivery, OutboxEvent, Subscription
from service.events.notifier import EventNotifier
from service.events.service import EventsRuntime
from service.policy import repository as policy_repository
from service.policy import service as policy_service
from service.policy.loader import load_policy_folder
from service.records.models import Citizen
from tests.fixtures.databases import create_scratch_database, drop_scratch_database
from tests.fixtures.webhooks import WebhookReceiver

EVENTS_POLICIES = Path(__file__).resolve().parent / "policies"


async def apply_events_policies(engine: AsyncEngine) -> None:
    """Store the catalog and agreements of ``tests/events/policies``; an agreement revoked
    by an earlier test becomes active again."""
    folder = load_policy_folder(EVENTS_POLICIES)
    async with AsyncSession(engine) as session:
        await policy_service.apply_folder(session, folder, author="tests", reason="events tests")
        await session.commit()


class LiveAgreements:
    """Revokes agreements through the policy service, as the owner's DELETE does."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def revoke(self, agreement_id: str) -> None:
        async with AsyncSession(self.engine) as session:
            row = await policy_repository.current_version(session, agreement_id)
            assert row is not None, agreement_id
            await policy_service.revoke(session, row, author="tests", reason="revoked by a test")
            await session.commit()


@dataclass
class ListAuditSink:
    entries: list[dict[str, Any]] = field(default_factory=list)
    failing: bool = False

    async def record(self, entries: Sequence[AuditEntry]) -> None:
        if self.failing:
            # What the audit writer raises when it cannot commit (AuditUnavailable, a 503).
            raise ServiceUnavailable("The audit log could not record this access.")
        # Kept as the stored records, which is what the tests read.
        self.entries.extend(entry.to_record() for entry in entries)

    async def record_in(self, conn: AsyncConnection, entries: Sequence[AuditEntry]) -> None:
        # Kept at once, not at the commit: the service calls this only once its change is
        # made and the commit is all that is left.
        await self.record(entries)

    def of(self, action: str) -> list[dict[str, Any]]:
        return [e for e in self.entries if e["action"] == action]


@pytest.fixture(scope="session")
async def events_database_url(database_url: str) -> AsyncIterator[str]:
    url = await create_scratch_database(database_url)
    engine = create_engine(url)
    async with AsyncSession(engine) as session:
        await catalog_service.store(session, load_catalog(EVENTS_POLICIES), author="tests")
        await session.commit()
    await apply_events_policies(engine)
    await engine.dispose()
    try:
        yield url
    finally:
        await drop_scratch_database(url)


@pytest.fixture(scope="session")
async def events_engine(events_database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(events_database_url)
    yield engine
    await engine.dispose()


@pytest.fixture(scope="session")
def events_settings(settings: Settings, events_database_url: str) -> Settings:
    return settings.model_copy(
        update={
            "database_url": events_database_url,
            "run_workers": False,
            "webhook_allow_private": True,
            "webhook_timeout_seconds": 5.0,
            "webhook_retry_base_seconds": 0.02,
            "webhook_retry_cap_seconds": 0.1,
            "webhook_max_attempts": 3,
            "events_poll_interval_seconds": 0.05,
        }
    )


@pytest.fixture(autouse=True)
async def _empty_events(events_engine: AsyncEngine) -> None:
    async with events_engine.begin() as conn:
        await conn.execute(delete(Delivery))
        await conn.execute(delete(Subscription))
        await conn.execute(delete(OutboxEvent))
    await apply_events_policies(events_engine)


@pytest.fixture
def policy() -> LivePolicy:
    return LivePolicy()


@pytest.fixture
def agreements(events_engine: AsyncEngine) -> LiveAgreements:
    """What a test revokes agreements through (by id)."""
    return LiveAgreements(events_engine)


@pytest.fixture
def audit_sink() -> ListAuditSink:
    return ListAuditSink()


@pytest.fixture
def runtime(
    events_settings: Settings, events_engine: AsyncEngine, policy: LivePolicy, audit_sink: ListAuditSink
) -> EventsRuntime:
    return EventsRuntime(
        settings=events_settings,
        engine=events_engine,
        policy=policy,
        audit=audit_sink,
        notifier=EventNotifier(),
    )


@pytest.fixture
async def events_app(events_settings: Settings, runtime: EventsRuntime) -> AsyncIterator[FastAPI]:
    application = create_app(events_settings)
    async with application.router.lifespan_context(application):
        application.state.events = runtime
        yield application


@pytest.fixture
async def api(events_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=events_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    with WebhookReceiver() as running:
        yield running


@pytest.fixture
async def dispatcher(runtime: EventsRuntime) -> AsyncIterator[Dispatcher]:
    made = Dispatcher(runtime)
    yield made
    await made.aclose()


@asynccontextmanager
async def running(dispatcher: Dispatcher) -> AsyncIterator[Dispatcher]:
    """The dispatcher's real loop as a background task for the length of the block."""
    stop = asyncio.Event()
    task = asyncio.create_task(dispatcher.run(stop))
    try:
        yield dispatcher
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


async def add_citizen(engine: AsyncEngine, status: str = "active") -> str:
    citizen_id = str(uuid.uuid4())
    now = utcnow()
    async with engine.begin() as conn:
        await conn.execute(
            insert(Citizen).values(
                id=citizen_id, status=status, version=1, registered_by="tests", created_at=now, updated_at=now
            )
        )
    return citizen_id


async def emit(runtime: EventsRuntime, citizen_id: str, fields: Sequence[str], owner: str) -> str:
    """A committed change, as the records write path makes one, then the wake-up."""
    async with runtime.engine.begin() as conn:
        event_id = await events_service.record_change(conn, citizen_id=citizen_id, fields=fields, owner=owner)
    events_service.notify(runtime.notifier)
    return event_id


async def occurred_at(engine: AsyncEngine, event_id: str, *, move_to: datetime | None = None) -> datetime:
    """When the outbox says the event occurred; with ``move_to``, after moving it there first
    (to tell the event's own time apart from when anything was sent)."""
    async with engine.begin() as conn:
        if move_to is not None:
            await conn.execute(
                update(OutboxEvent).where(OutboxEvent.event_id == event_id).values(occurred_at=move_to)
            )
        found = await conn.execute(select(OutboxEvent.occurred_at).where(OutboxEvent.event_id == event_id))
        return found.scalar_one()
