"""Audit API tests: on the test's rolled-back transaction (``audit_log``), or, where the
sequencer must see committed entries (checkpoints, proofs, tiles), on a fresh committed
database of their own (``audit_app``)."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from service.app import create_app
from service.audit.search import get_audit_access
from service.catalog import service as catalog_service
from service.catalog.loader import load_catalog
from service.config import Settings
from service.db import Database, create_engine
from service.records.models import Citizen
from service.schema import upgrade_async
from tests.conftest import TEST_POLICIES
from tests.fixtures.audit import TransactionAudit
from tests.fixtures.databases import create_scratch_database, drop_scratch_database


@pytest.fixture
async def sqlite_engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """An engine on a migrated SQLite file of the test's own, whichever database the suite
    is on: for what only a SQLite file has (the writer's own thread and connection, its
    checkpoints, the WAL index's commit marker)."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'audit.db'}"
    await upgrade_async(url)
    engine = create_engine(url)
    yield engine
    await engine.dispose()


@pytest.fixture
async def committed_engine(scratch_database: str) -> AsyncIterator[AsyncEngine]:
    """An engine on a fresh migrated database of the test's own, on the suite's backend:
    for tests whose audit entries really commit, which the run's database must never hold
    (``run_database_holds_no_audit_log`` in ``tests/conftest.py`` says why)."""
    engine = create_engine(scratch_database)
    yield engine
    await engine.dispose()


@pytest.fixture
async def audit_database(database_url: str, settings: Settings) -> AsyncIterator[str]:
    """A fresh committed database for one test, with the test catalog applied."""
    url = await create_scratch_database(database_url)
    database = Database(settings.model_copy(update={"database_url": url}))
    async with database.sessions.begin() as session:
        await catalog_service.store(session, load_catalog(TEST_POLICIES), author="tests")
    await database.dispose()
    yield url
    await drop_scratch_database(url)


@pytest.fixture
async def audit_app(
    audit_database: str, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[FastAPI]:
    # Checkpoints every 20 ms so tests need not wait for the default second.
    monkeypatch.setenv("TELLONCE_AUDIT_CHECKPOINT_INTERVAL_MS", "20")
    monkeypatch.setenv("TELLONCE_AUDIT_SEQUENCER_POLL_MS", "10")
    application = create_app(settings.model_copy(update={"database_url": audit_database}))
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def audit_client(audit_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=audit_app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


@pytest.fixture
def audit_log(app: FastAPI, session: AsyncSession, catalog_loaded: None) -> TransactionAudit:
    """The audit API (``app``, ``client``) on the test's rolled-back transaction: searches
    read it and record themselves in it; entries appended through it are rolled back too."""
    log = TransactionAudit(session)
    app.dependency_overrides[get_audit_access] = log.access
    return log


@pytest.fixture
def register_citizen(session: AsyncSession) -> Callable[[str], Awaitable[None]]:
    """Registers a citizen (no values) in the test's transaction."""

    async def register(citizen_id: str) -> None:
        now = datetime.now(UTC)
        session.add(
            Citizen(
                id=citizen_id,
                status="active",
                version=1,
                registered_by="tests",
                created_at=now,
                updated_at=now,
            )
        )
        await session.flush()

    return register


async def poll(check: Callable[[], Awaitable[Any]], timeout: float = 15.0) -> Any:
    """Poll ``check`` until it returns something truthy, or fail at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        import asyncio

        await asyncio.sleep(0.02)
