"""Records tests: the service or the HTTP API on the test's rolled-back transaction, or
the API on a fresh committed store where a test needs what a transaction cannot give.

``records_tx`` runs the records service on the test's own transaction
(``RecordsService.in_transaction``): the agreements in ``tests/records/policies`` are
applied in it and everything is rolled back after the test.

``records_env`` serves the HTTP API on that same transaction: the records service is
injected on the test's connection (``records_service``), the session, the audit search
and key events use it too, so nothing a test does outlives it. A test chooses its caller
per request with the ``X-Test-As: department:role,role`` header, which a test-only
override of ``get_principal`` reads.

``committed_records_env`` serves the API as a server runs it (pooled connections, the
raw-driver store, the batched audit writer) on a fresh migrated database per test, with
the agreements applied by the real CLI: for concurrent writers, the server's audit hooks
and scans of the database file.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from service.app import create_app
from service.audit.models import AuditEntryRow
from service.audit.search import get_audit_access
from service.auth.dependencies import Principal, get_principal
from service.auth.facts import RequestFacts
from service.config import Settings
from service.crypto.keyring import Keyring
from service.db import get_session
from service.errors import Unauthenticated
from service.policy import service as policy_service
from service.policy.loader import load_policy_folder
from service.policy.service import PolicyHolder
from service.records.endpoints import records_service
from service.records.service import AuditInTransaction, AuditSink, OneConnection, RecordsService
from service.records.store import CoreStore
from tests.fixtures.audit import TransactionAudit
from tests.fixtures.databases import create_scratch_database, drop_scratch_database

RECORDS_POLICIES = Path(__file__).parent / "policies"


def apply_policies(database_url: str, folder: Path = RECORDS_POLICIES) -> None:
    env = {**os.environ, "TELLONCE_DATABASE_URL": database_url, "TELLONCE_ENV": "test"}
    result = subprocess.run(
        [sys.executable, "-m", "service.cli", "policies", "apply", str(folder)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def as_(department: str, *roles: str, on_behalf_of: str | None = None) -> dict[str, str]:
    headers = {"X-Test-As": f"{department}:{','.join(roles)}"}
    if on_behalf_of:
        headers["X-Test-On-Behalf-Of"] = on_behalf_of
    return headers


async def _principal_from_header(request: Request) -> Principal:
    raw = request.headers.get("x-test-as")
    if not raw:
        raise Unauthenticated("A bearer access token is required.")
    department, _, roles = raw.partition(":")
    principal = Principal.with_roles(f"{department}-client", department, *roles.split(","))
    officer = request.headers.get("x-test-on-behalf-of")
    if officer:
        principal = Principal(
            client_id=principal.client_id,
            department=principal.department,
            roles=principal.roles,
            scopes=principal.scopes,
            on_behalf_of=officer,
        )
    return principal


@dataclass
class RecordsEnv:
    app: FastAPI
    client: httpx.AsyncClient
    database_url: str
    settings: Settings
    # On the test transaction: where the records service appends its audit entries (a
    # test may put a failing sink here). None on a committed store: the app's writer.
    audit: AuditSink | None = None

    async def register(self, **fields: Any) -> tuple[str, str]:
        """Register a citizen as the register's registrar; returns (id, national id)."""
        national_id = fields.pop("national_id", None) or f"NI{uuid.uuid4().hex[:10].upper()}"
        response = await self.client.post(
            "/v1/citizens",
            json={"national_id": national_id, "fields": fields},
            headers=as_("register", "registrar"),
        )
        assert response.status_code == 201, response.text
        return response.json()["id"], national_id

    async def erase(self, citizen_id: str) -> None:
        """Erase a citizen as the register's registrar, by court order."""
        response = await self.client.delete(
            f"/v1/citizens/{citizen_id}",
            params={"reason": "court-order", "legal_basis": "Court order 1"},
            headers=as_("register", "registrar"),
        )
        assert response.status_code == 204, response.text


@pytest.fixture
async def records_env(session: AsyncSession, settings: Settings) -> AsyncIterator[RecordsEnv]:
    """The HTTP API on the test's rolled-back transaction."""
    folder = load_policy_folder(RECORDS_POLICIES)
    await policy_service.apply_folder(session, folder, author="tests", reason="records tests")
    await session.flush()
    conn = await session.connection()
    app = create_app(settings)

    async def _test_session() -> AsyncIterator[AsyncSession]:
        yield session
        await session.flush()

    app.dependency_overrides[get_principal] = _principal_from_header
    app.dependency_overrides[get_session] = _test_session
    app.dependency_overrides[get_audit_access] = TransactionAudit(session).access

    def _records_on_the_transaction() -> RecordsService:
        return RecordsService(
            OneConnection(conn),
            app.state.keyring,
            env.audit or AuditInTransaction(conn),
            CoreStore(conn),
            app.state.policy,
            app.state.metrics,
            settings.verify_unconstrained_per_day,
            clock=lambda: app.state.clock(),
        )

    app.dependency_overrides[records_service] = _records_on_the_transaction
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            env = RecordsEnv(app, client, settings.database_url, settings, AuditInTransaction(conn))
            yield env


@pytest.fixture
async def committed_records_env(
    database_url: str, root_key: str, tmp_path: Path
) -> AsyncIterator[RecordsEnv]:
    """The HTTP API as a server runs it, on a fresh committed database of its own."""
    url = await create_scratch_database(database_url)
    try:
        apply_policies(url)
        data = tmp_path / "records-data"
        data.mkdir()
        settings = Settings(
            env="test",
            database_url=url,
            data_dir=data,
            root_key=root_key,  # type: ignore[arg-type]
            log_level="WARNING",
            policies_dir=RECORDS_POLICIES,
        )
        app = create_app(settings)
        app.dependency_overrides[get_principal] = _principal_from_header
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                yield RecordsEnv(app=app, client=client, database_url=url, settings=settings)
    finally:
        await drop_scratch_database(url)


def facts_as(department: str, *roles: str, purpose: str | None = None) -> RequestFacts:
    """The request facts of a client of ``department`` with ``roles``."""
    principal = Principal.with_roles(f"{department}-client", department, *roles)
    return RequestFacts(principal=principal, request_id=f"test-{uuid.uuid4()}", purpose=purpose)


@dataclass
class RecordsTx:
    """The records service on the test's transaction, and that transaction's connection."""

    records: RecordsService
    conn: AsyncConnection
    keyring: Keyring

    async def audit_entries(self, citizen_id: str) -> list[dict[str, Any]]:
        """The canonical audit entries about ``citizen_id``, oldest first."""
        rows = await self.conn.execute(
            select(AuditEntryRow.canonical)
            .where(AuditEntryRow.citizen_id == citizen_id)
            .order_by(AuditEntryRow.id)
        )
        return [json.loads(canonical) for (canonical,) in rows]


@pytest.fixture
async def records_tx(session: AsyncSession, settings: Settings) -> RecordsTx:
    folder = load_policy_folder(RECORDS_POLICIES)
    await policy_service.apply_folder(session, folder, author="tests", reason="records tests")
    await session.flush()
    conn = await session.connection()
    keyring = Keyring.from_settings(settings)
    return RecordsTx(RecordsService.in_transaction(conn, keyring, PolicyHolder()), conn, keyring)
