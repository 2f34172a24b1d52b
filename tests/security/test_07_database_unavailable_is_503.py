"""Finding 7: faults answered 500 where 503 is promised.

With the database refusing connections, reads, writes and ``/oauth/token`` answered 500
``internal-error``; a PATCH whose audit insert failed answered 500. Both are now 503
problem+json with ``Retry-After``, and nothing is read or changed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy import text

from service.db import Database, PostgresReads
from service.records.store import PostgresStore
from tests.fixtures.server import refused_port
from tests.records.conftest import RecordsEnv, as_

REGISTER = as_("register", "registrar")
WRITER = as_("register", "writer")
WELFARE = as_("welfare", "consumer")
SECRET_NAME = "Unavailable-Ursula"


@asynccontextmanager
async def database_refusing_connections(env: RecordsEnv) -> AsyncIterator[None]:
    """The app's database, its read pool included, now at an address nothing listens on
    (as a stopped PostgreSQL refuses connections)."""
    with refused_port() as port:
        state = env.app.state
        saved = state.database, state.records_store, state.driver_reads
        address = f"tellonce:unused@127.0.0.1:{port}/tellonce"
        state.database = Database(
            env.settings.model_copy(update={"database_url": f"postgresql+asyncpg://{address}"})
        )
        pool = await asyncpg.create_pool(f"postgresql://{address}", min_size=0)
        state.records_store = PostgresStore(pool)
        state.driver_reads = PostgresReads(pool)
        try:
            yield
        finally:
            await state.database.dispose()
            await pool.close()
            state.database, state.records_store, state.driver_reads = saved


def _assert_503(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    assert int(response.headers["retry-after"]) >= 1
    assert SECRET_NAME not in response.text
    body: dict[str, Any] = response.json()
    return body


async def _read(env: RecordsEnv, citizen_id: str) -> dict[str, Any]:
    response = await env.client.get(
        f"/v1/citizens/{citizen_id}",
        params={"fields": "given_name,address", "purpose": "benefit-eligibility"},
        headers=WELFARE,
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


class TestDatabaseRefusingConnections:
    async def test_every_kind_of_request_is_503_with_retry_after(self, security_env: RecordsEnv) -> None:
        citizen_id, national_id = await security_env.register(given_name=SECRET_NAME)
        client = security_env.client
        async with database_refusing_connections(security_env):
            responses = {
                "catalog": await client.get("/v1/catalog", headers=WELFARE),
                "read": await client.get(
                    f"/v1/citizens/{citizen_id}", params={"purpose": "benefit-eligibility"}, headers=WELFARE
                ),
                "batch-get": await client.post(
                    "/v1/citizens/batch-get",
                    json={"ids": [citizen_id], "purpose": "benefit-eligibility"},
                    headers=WELFARE,
                ),
                "lookup": await client.post(
                    "/v1/citizens/lookup",
                    json={"national_id": national_id, "purpose": "benefit-eligibility"},
                    headers=WELFARE,
                ),
                "register": await client.post(
                    "/v1/citizens", json={"national_id": "RX-503-000-001", "fields": {}}, headers=REGISTER
                ),
                "patch": await client.patch(
                    f"/v1/citizens/{citizen_id}/fields",
                    json={"fields": {"address": "2 New Street"}, "reason": "moved"},
                    headers=WRITER,
                ),
                "token": await client.post(
                    "/oauth/token", data={"grant_type": "client_credentials"}, auth=("tc_someone", "secret")
                ),
                "audit": await client.get("/v1/audit/entries", headers=as_("audit-office", "auditor")),
            }
        for name, response in responses.items():
            body = _assert_503(response)
            assert body["status"] == 503, name
        assert responses["read"].json()["type"].endswith("/database-unavailable")
        # Back up: nothing was changed while it was down.
        after = await _read(security_env, citizen_id)
        assert after["version"] == 1
        assert after["fields"]["address"]["value"] is None


_TRIGGERS = {
    "sqlite": (
        [
            "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_entries "
            "BEGIN SELECT RAISE(ABORT, 'audit storage failed'); END"
        ],
        ["DROP TRIGGER refuse_audit"],
    ),
    "postgresql": (
        [
            "CREATE FUNCTION refuse_audit() RETURNS trigger AS $$ "
            "BEGIN RAISE EXCEPTION 'audit storage failed'; END $$ LANGUAGE plpgsql",
            "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_entries "
            "FOR EACH ROW EXECUTE FUNCTION refuse_audit()",
        ],
        ["DROP TRIGGER refuse_audit ON audit_entries", "DROP FUNCTION refuse_audit()"],
    ),
}


@asynccontextmanager
async def audit_refusing_inserts(env: RecordsEnv) -> AsyncIterator[None]:
    """The audit table refuses every insert (a real database error, as a full disk or a
    broken trigger would give); everything else works."""
    engine = env.app.state.database.engine
    create, drop = _TRIGGERS[engine.dialect.name]
    async with engine.begin() as conn:
        for statement in create:
            await conn.execute(text(statement))
    try:
        yield
    finally:
        async with engine.begin() as conn:
            for statement in drop:
                await conn.execute(text(statement))


class TestAuditFailure:
    async def test_a_patch_whose_audit_insert_fails_is_503_and_writes_nothing(
        self, security_env: RecordsEnv
    ) -> None:
        citizen_id, _ = await security_env.register(given_name=SECRET_NAME)
        async with audit_refusing_inserts(security_env):
            response = await security_env.client.patch(
                f"/v1/citizens/{citizen_id}/fields",
                json={"fields": {"address": "2 New Street"}, "reason": "moved"},
                headers=WRITER,
            )
        body = _assert_503(response)
        assert body["type"].endswith("/audit-unavailable")
        after = await _read(security_env, citizen_id)
        assert after["version"] == 1
        assert after["fields"]["address"]["value"] is None

    async def test_a_read_whose_audit_entry_fails_releases_nothing(self, security_env: RecordsEnv) -> None:
        citizen_id, _ = await security_env.register(given_name=SECRET_NAME)
        async with audit_refusing_inserts(security_env):
            response = await security_env.client.get(
                f"/v1/citizens/{citizen_id}",
                params={"fields": "given_name", "purpose": "benefit-eligibility"},
                headers=WELFARE,
            )
        body = _assert_503(response)
        assert body["type"].endswith("/audit-unavailable")


@pytest.fixture(autouse=True)
def _writer_role_exists() -> None:
    """The register's writer writes its own fields without an agreement."""


class TestPostgresRefusingWrites:
    """PostgreSQL's own "cannot do that now" errors on a write: a full disk (53100), a
    server that is read-only (25006: a hot standby after a failover, or
    ``default_transaction_read_only``), out of memory (53200). Raised here by a trigger
    with the server's own SQLSTATE, as the server would raise them."""

    @pytest.mark.parametrize("sqlstate", ["disk_full", "read_only_sql_transaction", "out_of_memory"])
    async def test_a_patch_is_503_and_writes_nothing(self, security_env: RecordsEnv, sqlstate: str) -> None:
        engine = security_env.app.state.database.engine
        if engine.dialect.name != "postgresql":
            pytest.skip(
                "PostgreSQL's SQLSTATEs; SQLite's full disk is in tests/e2e/test_sqlite_storage_faults.py"
            )
        citizen_id, _ = await security_env.register(given_name=SECRET_NAME)
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "CREATE FUNCTION refuse_values() RETURNS trigger AS $$ BEGIN RAISE EXCEPTION "
                    f"'could not extend file' USING ERRCODE = '{sqlstate}'; END $$ LANGUAGE plpgsql"
                )
            )
            await conn.execute(
                text(
                    "CREATE TRIGGER refuse_values BEFORE INSERT ON field_values "
                    "FOR EACH ROW EXECUTE FUNCTION refuse_values()"
                )
            )
        try:
            response = await security_env.client.patch(
                f"/v1/citizens/{citizen_id}/fields",
                json={"fields": {"address": "2 New Street"}, "reason": "moved"},
                headers=WRITER,
            )
        finally:
            async with engine.begin() as conn:
                await conn.execute(text("DROP TRIGGER refuse_values ON field_values"))
                await conn.execute(text("DROP FUNCTION refuse_values()"))
        body = _assert_503(response)
        assert body["type"].endswith("/database-unavailable")
        after = await _read(security_env, citizen_id)
        assert after["version"] == 1
        assert after["fields"]["address"]["value"] is None
