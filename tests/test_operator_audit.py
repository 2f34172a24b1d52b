"""Operator commands are audited under the operator who ran them, each with its own action."""

from __future__ import annotations

import asyncio
import getpass
import json
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select
from typer.testing import CliRunner

from service import operator
from service.audit.models import AuditEntryRow
from service.cli import app as cli_app
from service.config import get_settings
from service.db import create_engine
from tests.conftest import TEST_POLICIES


@pytest.fixture
def database(scratch_database: str, tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    monkeypatch.setenv("TELLONCE_DATABASE_URL", scratch_database)
    monkeypatch.setenv("TELLONCE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("TELLONCE_ENV", "test")
    monkeypatch.delenv("TELLONCE_ACTOR", raising=False)
    get_settings.cache_clear()
    yield scratch_database
    operator.choose(None)
    get_settings.cache_clear()


def run(*args: str) -> str:
    result = CliRunner().invoke(cli_app, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout


async def entries(database_url: str, action: str) -> list[dict[str, Any]]:
    engine = create_engine(database_url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                select(AuditEntryRow.canonical)
                .where(AuditEntryRow.action == action)
                .order_by(AuditEntryRow.id)
            )
            return [json.loads(row[0]) for row in rows]
    finally:
        await engine.dispose()


class TestOperatorActions:
    def test_client_create_and_disable_name_the_actor(
        self, database: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        run("policies", "apply", str(TEST_POLICIES))
        created = json.loads(
            run(
                "--actor",
                "alice",
                "clients",
                "create",
                "--department",
                "welfare",
                "--roles",
                "consumer",
                "--json",
            )
        )
        [entry] = asyncio.run(entries(database, "client-create"))
        assert entry["client_id"] == "operator:alice"
        assert entry["department"] == "welfare"
        assert (
            f"client {created['client_id']} created: roles consumer, client_secret"
            in entry["reasons"][0]["reason"]
        )
        assert created["client_secret"] not in json.dumps(entry)

        monkeypatch.setenv("TELLONCE_ACTOR", "bob")
        operator.choose(None)
        run("clients", "disable", created["client_id"])
        [disabled] = asyncio.run(entries(database, "client-disable"))
        assert disabled["client_id"] == "operator:bob"
        assert disabled["reasons"][0]["reason"] == f"client {created['client_id']} disabled"

    def test_signing_key_rotation_is_its_own_action(self, database: str) -> None:
        printed = run("--actor", "carol", "auth", "rotate-signing-key")
        kid = printed.split()[3]
        [entry] = asyncio.run(entries(database, "signing-key-rotate"))
        assert entry["client_id"] == "operator:carol"
        assert kid in entry["reasons"][0]["reason"]

    def test_policy_changes_default_to_the_os_user(self, database: str) -> None:
        run("policies", "apply", str(TEST_POLICIES))
        changes = asyncio.run(entries(database, "policy-change"))
        assert changes
        assert {c["client_id"] for c in changes} == {f"operator:{getpass.getuser()}"}

    def test_key_operations_name_the_operator(self, database: str) -> None:
        from service.audit.key_events import KeyEventsInTransaction
        from service.crypto.keyring import KeyEvent

        async def append_one() -> None:
            engine = create_engine(database)
            try:
                async with engine.begin() as conn:
                    await KeyEventsInTransaction("operator:dave")(
                        conn, KeyEvent("kek.created", "dvla", {"version": 2})
                    )
            finally:
                await engine.dispose()

        asyncio.run(append_one())
        [entry] = asyncio.run(entries(database, "key-operation"))
        assert entry["client_id"] == "operator:dave"
        assert entry["reasons"][0]["reason"] == "kek.created: version=2"

    def test_init_records_the_keys_it_made(self, database: str) -> None:
        run("--actor", "erin", "init")
        made = asyncio.run(entries(database, "key-operation"))
        reasons = [e["reasons"][0]["reason"] for e in made]
        assert {e["client_id"] for e in made} == {"operator:erin"}
        assert any(r.startswith("init: access-token signing key: created") for r in reasons)
        assert any(r.startswith("init: audit checkpoint key: created") for r in reasons)
        run("init")  # nothing new, nothing recorded
        assert len(asyncio.run(entries(database, "key-operation"))) == len(made)
