"""Shared fixtures.

The run's database comes from ``TELLONCE_TEST_DATABASE_URL`` (PostgreSQL in the second
pass of ``make test``) or is a temporary SQLite file. It is migrated once per run with
Alembic; each test then runs inside one transaction that is rolled back.
"""

from __future__ import annotations

import asyncio
import base64
import os
import secrets
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from service.app import create_app
from service.audit.models import AuditEntryRow
from service.audit.writer import get_refusal_writer
from service.catalog import service as catalog_service
from service.catalog.loader import load_catalog
from service.config import Settings
from service.db import create_engine, get_session
from service.schema import upgrade
from tests.fixtures.audit import TransactionAudit
from tests.fixtures.auth import standing_on
from tests.fixtures.databases import (
    base_database_url,
    create_scratch_database,
    drop_scratch_database,
    drop_templates,
    is_postgres,
    remove_base_database,
)
from tests.fixtures.server import LiveServer, start_server
from tests.fixtures.statuses import RecordedMetrics

REPO_ROOT = Path(__file__).resolve().parent.parent
TEST_POLICIES = REPO_ROOT / "tests" / "fixtures" / "policies"
DEMO_POLICIES = REPO_ROOT / "policies"


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    url = base_database_url()
    upgrade(url)
    yield url
    remove_base_database(url)


@pytest.fixture(scope="session")
def on_postgres(database_url: str) -> bool:
    return is_postgres(database_url)


@pytest.fixture(scope="session")
def root_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode()


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("tellonce-data")


@pytest.fixture(scope="session")
def settings(database_url: str, data_dir: Path, root_key: str) -> Settings:
    return Settings(
        env="test",
        database_url=database_url,
        data_dir=data_dir,
        root_key=root_key,  # type: ignore[arg-type]
        log_json=True,
        log_level="WARNING",
        policies_dir=TEST_POLICIES,
    )


@pytest.fixture(scope="session")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(database_url)
    yield engine
    await engine.dispose()


@pytest.fixture
async def session(engine: AsyncEngine) -> AsyncIterator[AsyncSession]:
    """A session inside a transaction that is rolled back after the test."""
    async with engine.connect() as connection:
        transaction = await connection.begin()
        if connection.dialect.name == "sqlite":
            # pysqlite defers BEGIN until the first write, so without this the session's
            # SAVEPOINT would open the real transaction and its RELEASE (a commit inside
            # the request) would reach the disk. With it, everything is rolled back.
            await connection.exec_driver_sql("BEGIN")
        # Nothing may commit to this database while a test runs: from the test's first read
        # this is a read transaction, which SQLite upgrades at the test's first write, and it
        # fails that write at once ("database is locked", no busy wait) if another connection
        # committed since that read or holds the write lock at that moment. So tests that
        # must commit use ``scratch_database``, and ``run_database_holds_no_audit_log`` fails
        # a test that would make the app's sequencer a writer here.
        test_session = AsyncSession(
            bind=connection, expire_on_commit=False, join_transaction_mode="create_savepoint"
        )
        try:
            yield test_session
        finally:
            await test_session.close()
            await transaction.rollback()


@pytest.fixture(autouse=True)
async def run_database_holds_no_audit_log(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    """Fails a test that leaves committed audit entries in the run's database.

    Every ``app`` runs the audit sequencer, which sees committed rows only. On a log that
    holds committed entries it is a writer: it sequences those not yet sequenced, and each
    new sequencer owes a checkpoint of them a second after it starts; it tries its write
    every round until it goes through. Under load one such write committed between a
    test's first read and its first write, which then failed at once ("database is
    locked", see ``session``). On an empty log the sequencer never writes."""
    yield
    if "engine" not in request.fixturenames:
        return
    engine: AsyncEngine = request.getfixturevalue("engine")
    async with engine.connect() as conn:
        committed = (await conn.execute(select(func.count()).select_from(AuditEntryRow))).scalar_one()
    assert committed == 0, (
        f"the run's database holds {committed} committed audit entries (this test or one before it "
        "committed them): commit on a database of the test's own (scratch_database) instead"
    )


@pytest.fixture
async def catalog_loaded(session: AsyncSession) -> None:
    """The test catalog stored in the per-test transaction."""
    await catalog_service.store(session, load_catalog(TEST_POLICIES), author="tests")


@pytest.fixture
async def app(settings: Settings, session: AsyncSession) -> AsyncIterator[FastAPI]:
    application = create_app(settings)

    async def _test_session() -> AsyncIterator[AsyncSession]:
        yield session
        await session.flush()

    application.dependency_overrides[get_session] = _test_session
    # Refused policy changes are recorded in the test's transaction too, not committed
    # beside it by the app's writer (``tests/policy/test_refusals_audited.py`` runs that one).
    application.dependency_overrides[get_refusal_writer] = lambda: TransactionAudit(session)
    async with application.router.lifespan_context(application):
        standing_on(application, session)
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        yield http


@pytest.fixture
async def scratch_database(database_url: str) -> AsyncIterator[str]:
    """A fresh migrated database for a test that must really commit."""
    url = await create_scratch_database(database_url)
    try:
        yield url
    finally:
        await drop_scratch_database(url)


def server_env(database_url: str, data_dir: Path, root_key: str) -> dict[str, str]:
    return {
        "TELLONCE_ENV": "test",
        "TELLONCE_DATABASE_URL": database_url,
        "TELLONCE_DATA_DIR": str(data_dir),
        "TELLONCE_ROOT_KEY": root_key,
        "TELLONCE_LOG_LEVEL": "WARNING",
        "TELLONCE_POLICIES_DIR": str(TEST_POLICIES),
    }


@pytest.fixture
def live_server(scratch_database: str, tmp_path: Path, root_key: str) -> Iterator[LiveServer]:
    """``tellonce serve`` on a free loopback port, against its own scratch database."""
    data = tmp_path / "data"
    data.mkdir()
    server = start_server(server_env(scratch_database, data, root_key), tmp_path / "server.log")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session", autouse=True)
def recorded_answers() -> Iterator[None]:
    """Every app the run creates keeps its request counts for tests/test_openapi.py."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("service.app.Metrics", RecordedMetrics)
        yield


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # The comparison of declared and answered statuses reads what every other test answered.
    last = [item for item in items if item.get_closest_marker("after_all") is not None]
    items[:] = [item for item in items if item not in last] + last


def pytest_sessionfinish() -> None:
    # The migrated databases the run's scratch databases were copied from.
    asyncio.run(drop_templates())


def pytest_report_header() -> str:
    url = os.environ.get("TELLONCE_TEST_DATABASE_URL", "temporary SQLite file")
    return f"tellonce test database: {url.split('@')[-1]}"
