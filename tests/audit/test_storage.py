"""The entry table is append-only at the database; writes audit in their own transaction."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from service.audit.entries import SERVICE_ACTOR
from service.audit.key_events import KeyEventsInTransaction
from service.audit.models import AuditCheckpoint, AuditEntryRow, AuditLeaf, AuditNode
from service.audit.writer import append_in_transaction
from service.crypto.keyring import KeyEvent
from service.db import Base
from tests.fixtures.audit import make_entry


class TestAppendOnlyTriggers:
    @pytest.mark.parametrize("statement", ["update", "delete"])
    async def test_entries_refuse_change(self, engine: AsyncEngine, statement: str) -> None:
        async with engine.connect() as conn:
            transaction = await conn.begin()
            try:
                entry_id = await append_in_transaction(conn, make_entry())
                change = (
                    update(AuditEntryRow).where(AuditEntryRow.id == entry_id).values(decision="deny")
                    if statement == "update"
                    else delete(AuditEntryRow).where(AuditEntryRow.id == entry_id)
                )
                savepoint = await conn.begin_nested()
                with pytest.raises(DBAPIError, match="append-only"):
                    await conn.execute(change)
                await savepoint.rollback()
                stored = (
                    await conn.execute(select(AuditEntryRow.decision).where(AuditEntryRow.id == entry_id))
                ).scalar()
                assert stored == "permit"
            finally:
                await transaction.rollback()

    @pytest.mark.parametrize("model", [AuditLeaf, AuditNode, AuditCheckpoint])
    async def test_tree_tables_refuse_delete(self, engine: AsyncEngine, model: type[Base]) -> None:
        async with engine.connect() as conn:
            transaction = await conn.begin()
            try:
                rows: dict[type[Base], dict[str, Any]] = {
                    AuditLeaf: {"leaf_index": -5, "entry_id": -5},
                    AuditNode: {"level": -5, "index": -5, "hash": b"x" * 32},
                    AuditCheckpoint: {"tree_size": -5, "root_hash": b"x" * 32, "note": "n"},
                }
                await conn.execute(insert(model).values(**rows[model]))
                with pytest.raises(DBAPIError, match="append-only"):
                    await conn.execute(delete(model))
            finally:
                await transaction.rollback()


class TestAppendInTransaction:
    async def test_rolls_back_with_the_change(self, engine: AsyncEngine) -> None:
        async with engine.connect() as conn:
            transaction = await conn.begin()
            entry_id = await append_in_transaction(conn, make_entry(action="write"))
            assert entry_id > 0
            await transaction.rollback()
        async with engine.connect() as conn:
            count = (await conn.execute(select(func.count()).where(AuditEntryRow.id == entry_id))).scalar()
        assert count == 0

    async def test_commits_with_the_change(self, committed_engine: AsyncEngine) -> None:
        entry = make_entry(action="write")
        async with committed_engine.begin() as conn:
            entry_id = await append_in_transaction(conn, entry)
        async with committed_engine.connect() as conn:
            canonical = (
                await conn.execute(select(AuditEntryRow.canonical).where(AuditEntryRow.id == entry_id))
            ).scalar()
        assert canonical == entry.canonical()


class TestEntry:
    def test_record_holds_only_json_types(self) -> None:
        record = make_entry().to_record()

        def plain(value: object) -> bool:
            if isinstance(value, dict):
                return all(isinstance(k, str) and plain(v) for k, v in value.items())
            if isinstance(value, list):
                return all(plain(v) for v in value)
            return value is None or isinstance(value, str | int | bool)

        assert plain(record)
        assert set(record) >= {"time", "request_id", "client_id", "action", "decision", "reasons", "status"}

    def test_unknown_action_or_extra_field_is_refused(self) -> None:
        with pytest.raises(ValueError, match="action"):
            make_entry(action="peek")
        with pytest.raises(ValueError, match="national_id"):
            make_entry(national_id="AB123456C")

    def test_time_must_be_iso_8601(self) -> None:
        with pytest.raises(ValueError, match="ISO 8601"):
            make_entry(time="last tuesday")


class TestKeyEvents:
    async def test_a_key_event_is_appended_in_the_transaction_that_made_it(
        self, committed_engine: AsyncEngine
    ) -> None:
        hook = KeyEventsInTransaction()
        async with committed_engine.begin() as conn:
            await hook(conn, KeyEvent("kek-rotated", "dvla", {"version": 2}))
        async with committed_engine.connect() as conn:
            canonical = (
                await conn.execute(select(AuditEntryRow.canonical).order_by(AuditEntryRow.id.desc()).limit(1))
            ).scalar_one()
        record = json.loads(canonical)
        assert record["action"] == "key-operation"
        assert record["client_id"] == SERVICE_ACTOR == "tellonce-service"
        assert record["owners"] == ["dvla"]
        assert record["reasons"] == [
            {
                "field": "",
                "effect": "permit",
                "agreement": None,
                "version": None,
                "digest": None,
                "reason": "kek-rotated: version=2",
                "held_for": None,
            }
        ]

    async def test_a_key_event_is_gone_with_a_rolled_back_transaction(self, engine: AsyncEngine) -> None:
        """The trail says a key changed exactly when the change committed."""

        async def count() -> int:
            async with engine.connect() as conn:
                return (await conn.execute(select(func.count()).select_from(AuditEntryRow))).scalar_one()

        before = await count()
        async with engine.connect() as conn:
            transaction = await conn.begin()
            await KeyEventsInTransaction("operator:dave")(
                conn, KeyEvent("kek.created", "dvla", {"version": 2})
            )
            inside = (await conn.execute(select(func.count()).select_from(AuditEntryRow))).scalar_one()
            await transaction.rollback()
        assert (inside, await count()) == (before + 1, before)
