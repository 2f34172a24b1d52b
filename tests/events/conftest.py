"""Events tests run against their own committed database: the feed and the dispatcher read
with fresh connections and must see commits, as they do in production.

One scratch database per run (migrated, test catalog stored); every test starts with an
empty outbox and no subscriptions.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi import FastAPI
from sqlalchemy import delete, insert
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from service.app import create_app
from service.catalog import service as catalog_service
from service.catalog.loader import load_catalog
from service.config import Settings
from service.db import create_engine, utcnow
from service.errors import ServiceUnavailable
from service.events import service as events_service
from service.events.dispatcher import Dispatcher
from service.events.models import Delivery, OutboxEvent, Subscription
from service.events.notifier import EventNotifier
from service.events.service import EventsRuntime
from service.records.models import Citizen
from tests.fixtures.databases import create_scratch_database, drop_scratch_database
from tests.fixtures.webhooks import WebhookReceiver

EVENTS_POLICIES = Path(__file__).resolve().parent / "policies"


@dataclass(frozen=True)
class StubDecision:
    field: str
    effect: str
    reason: str
    agreement: str | None = None
    version: int | None = None
    legal_basis: str | None = None


class StubPolicy:
    """The ``subscribe`` grants of ``tests/events/policies``, decided the way the policy
    engine does for them: the owner may always; otherwise an agreement naming the consumer,
    field and purpose, whose ``when`` (here only ``citizen.status == "active"``) holds."""

    def __init__(self) -> None:
        self.owners = load_catalog(EVENTS_POLICIES).field_owners
        self.agreements: list[dict[str, Any]] = []
        for path in sorted(EVENTS_POLICIES.glob("*.yaml")):
            if path.name != "catalog.yaml":
                self.agreements.extend(yaml.safe_load(path.read_text())["agreements"])
        self.revoked: set[str] = set()

    async def revoke(self, agreement_id: str) -> None:
        self.revoked.add(agreement_id)

    def _decide_field(
        self, department: str, name: str, purpose: str, citizen_status: str | None
    ) -> StubDecision:
        if self.owners.get(name) == department:
            return StubDecision(name, "permit", f"{department} owns {name}")
        for agreement in self.agreements:
            if (
                agreement["id"] in self.revoked
                or agreement["consumer"] != department
                or "subscribe" not in agreement["actions"]
                or name not in agreement["fields"]
                or purpose not in agreement["purposes"]
            ):
                continue
            if agreement.get("when") and citizen_status != "active":
                return StubDecision(
                    name, "deny", f"agreement {agreement['id']} condition not met", agreement["id"], 1
                )
            return StubDecision(name, "permit", "permitted", agreement["id"], 1, agreement["legal_basis"])
        return StubDecision(
            name, "deny", f"no agreement gives {department} subscribe on {name} for {purpose}"
        )

    async def current(self, conn: Any) -> Any:
        def decide(
            department: str, fields: Sequence[str], purpose: str, citizen_status: str | None, now: datetime
        ) -> Mapping[str, StubDecision]:
            return {name: self._decide_field(department, name, purpose, citizen_status) for name in fields}

        return decide


@dataclass
class ListAuditSink:
    entries: list[dict[str, Any]] = field(default_factory=list)
    failing: bool = False

    async def record(self, entries: Sequence[dict[str, Any]]) -> None:
        if self.failing:
            # What the audit writer raises when it cannot commit (AuditUnavailable, a 503).
            raise ServiceUnavailable("The audit log could not record this access.")
        self.entries.extend(entries)

    def of(self, action: str) -> list[dict[str, Any]]:
        return [e for e in self.entries if e["action"] == action]


@pytest.fixture(scope="session")
async def events_database_url(database_url: str) -> AsyncIterator[str]:
    url = await create_scratch_database(database_url)
    engine = create_engine(url)
    async with AsyncSession(engine) as session:
        await catalog_service.store(session, load_catalog(EVENTS_POLICIES), author="tests")
        await session.commit()
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


@pytest.fixture
def policy() -> StubPolicy:
    return StubPolicy()


@pytest.fixture
def agreements(policy: StubPolicy) -> StubPolicy:
    """What a test revokes agreements through (by id)."""
    return policy


@pytest.fixture
def audit_sink() -> ListAuditSink:
    return ListAuditSink()


@pytest.fixture
def runtime(
    events_settings: Settings, events_engine: AsyncEngine, policy: StubPolicy, audit_sink: ListAuditSink
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
