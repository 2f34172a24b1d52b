"""The migrations are the schema: models and migrations agree on every database."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncEngine

from service.consent.models import Consent
from service.db import Base, UTCDateTime, create_engine
from service.events.models import Delivery
from service.policy.models import AgreementVersion
from service.records.models import Citizen
from service.schema import alembic_config, check, head_revisions, known_revisions, upgrade_async
from tests.fixtures.databases import create_scratch_database, drop_scratch_database, is_postgres


async def index_definitions(engine: AsyncEngine) -> dict[str, str]:
    """Each index's definition as the database states it (names of the schema's own
    indexes; SQLite's automatic ones have no SQL)."""
    async with engine.connect() as conn:
        if conn.dialect.name == "sqlite":
            rows = await conn.execute(text("SELECT name, sql FROM sqlite_master WHERE type = 'index'"))
        else:
            rows = await conn.execute(
                text("SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = current_schema()")
            )
        return {str(name): str(definition) for name, definition in rows if definition}


def _schema_of(conn: Connection) -> dict[str, Any]:
    inspector = sa.inspect(conn)
    return {
        table: {
            "columns": [
                (c["name"], str(c["type"]), c["nullable"], str(c.get("default")))
                for c in inspector.get_columns(table)
            ],
            "indexes": sorted(
                (i["name"], tuple(i["column_names"]), i["unique"]) for i in inspector.get_indexes(table)
            ),
            "unique": sorted(
                (u["name"], tuple(u["column_names"])) for u in inspector.get_unique_constraints(table)
            ),
            "foreign_keys": sorted(
                (f["name"], tuple(f["constrained_columns"]), f["referred_table"], str(f.get("options")))
                for f in inspector.get_foreign_keys(table)
            ),
            "primary_key": inspector.get_pk_constraint(table),
            "checks": sorted((c["name"], c["sqltext"]) for c in inspector.get_check_constraints(table)),
        }
        for table in sorted(inspector.get_table_names())
    }


async def schema_at(url: str) -> dict[str, Any]:
    """Every table's columns, keys, constraints and indexes (with their WHERE), as the
    database states them: equal for two databases only if their schemas are."""
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            schema = await conn.run_sync(_schema_of)
        schema["index definitions"] = await index_definitions(engine)
        return schema
    finally:
        await engine.dispose()


async def differences_at(url: str) -> list[Any]:
    """Alembic's comparison of the database with the models, server defaults included."""
    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(
                lambda sync: compare_metadata(
                    MigrationContext.configure(
                        sync, opts={"compare_type": True, "compare_server_default": True}
                    ),
                    Base.metadata,
                )
            )
    finally:
        await engine.dispose()


def _a_value(column: sa.Column[Any]) -> Any:
    kind = column.type
    if isinstance(kind, sa.Enum):
        return kind.enums[0]
    if isinstance(kind, UTCDateTime | sa.DateTime):
        return datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
    if isinstance(kind, sa.Date):
        return date(2026, 12, 1)
    if isinstance(kind, sa.JSON):
        return []
    python_type = kind.python_type
    return {bool: False, int: 1, float: 1.0, bytes: b"x"}.get(python_type, "x")


async def one_row_in_every_table(url: str) -> None:
    """A row in every table the migrations left empty, each foreign key pointing at the
    row of the table it names (every key column of every row is "x" or 1)."""
    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            for table in Base.metadata.sorted_tables:
                if (await conn.execute(sa.select(sa.func.count()).select_from(table))).scalar_one():
                    continue
                await conn.execute(
                    table.insert().values(
                        {
                            column.name: _a_value(column)
                            for column in table.columns
                            if not (column.primary_key and column.autoincrement is True)
                        }
                    )
                )
    finally:
        await engine.dispose()


def revisions_oldest_first() -> list[str]:
    script = ScriptDirectory.from_config(alembic_config("sqlite://"))
    return [revision.revision for revision in reversed(list(script.walk_revisions()))]


async def definitions_at(url: str) -> dict[str, str]:
    engine = create_engine(url)
    try:
        return await index_definitions(engine)
    finally:
        await engine.dispose()


class TestMigrations:
    def test_models_match_migrations(self, database_url: str) -> None:
        # Raises alembic.util.exc.AutoGenerateDiffsDetected on any difference.
        check(database_url)

    async def test_nothing_differs_server_defaults_included(self, database_url: str) -> None:
        # `alembic check` (above) leaves server defaults out.
        url = await create_scratch_database(database_url)
        try:
            assert await differences_at(url) == []
        finally:
            await drop_scratch_database(url)

    def test_single_head(self) -> None:
        assert len(head_revisions()) == 1

    def test_the_revisions_read_once_are_the_folders(self) -> None:
        # head_revisions and known_revisions read the folder once per process.
        script = ScriptDirectory.from_config(alembic_config("sqlite://"))
        assert head_revisions() == set(script.get_heads())
        assert known_revisions() == set(revisions_oldest_first())

    async def test_partial_indexes_match_the_models(self, engine: AsyncEngine) -> None:
        # `alembic check` compares neither an index's WHERE nor its absence.
        definitions = await index_definitions(engine)
        for table in Base.metadata.tables.values():
            for index in table.indexes:
                partial = index.dialect_options[engine.dialect.name].get("where") is not None
                assert index.name in definitions, index.name
                assert (" WHERE " in definitions[index.name]) == partial, definitions[index.name]


class TestBlindIndexPartial:
    """0017: the blind-index index keeps only rows that have a blind index, and going
    down restores the index over every row."""

    async def test_upgrade_downgrade_upgrade(self, database_url: str) -> None:
        url = await create_scratch_database(database_url)
        try:
            made = (await definitions_at(url))["ix_field_values_blind_index"]
            assert made.endswith("WHERE (blind_index IS NOT NULL)") or made.endswith(
                "WHERE blind_index IS NOT NULL"
            ), made
            await asyncio.to_thread(command.downgrade, alembic_config(url), "0016_access_notices")
            assert " WHERE " not in (await definitions_at(url))["ix_field_values_blind_index"]
            await upgrade_async(url)
            assert (await definitions_at(url))["ix_field_values_blind_index"] == made
        finally:
            await drop_scratch_database(url)

    async def test_upgrade_after_a_cut_short_build_on_postgres(self, database_url: str) -> None:
        # PostgreSQL builds the new index CONCURRENTLY beside the old one; a run cut short
        # leaves it behind, and the next run starts again from scratch.
        if not is_postgres(database_url):
            pytest.skip("SQLite rebuilds the index in one transaction")
        url = await create_scratch_database(database_url)
        try:
            await asyncio.to_thread(command.downgrade, alembic_config(url), "0016_access_notices")
            engine = create_engine(url)
            try:
                async with engine.begin() as conn:
                    await conn.execute(
                        text("CREATE INDEX ix_field_values_blind_index_new ON field_values (field)")
                    )
            finally:
                await engine.dispose()
            await upgrade_async(url)
            definitions = await definitions_at(url)
            assert "ix_field_values_blind_index_new" not in definitions
            assert definitions["ix_field_values_blind_index"].endswith("WHERE (blind_index IS NOT NULL)")
        finally:
            await drop_scratch_database(url)


class TestDeliveryReleased:
    """0019: what is known to have been released before keeps its event and citizen in the
    deliveries list; a withheld delivery keeps no policy reasons."""

    async def test_upgrade_marks_what_was_released_and_forgets_withholding_reasons(
        self, database_url: str
    ) -> None:
        url = await create_scratch_database(database_url)
        try:
            await asyncio.to_thread(command.downgrade, alembic_config(url), "0018_webhook_secret_rotation")
            when = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
            outbox = sa.table(
                "event_outbox",
                sa.column("position", sa.Integer),
                sa.column("event_id"),
                sa.column("citizen_id"),
                sa.column("fields", sa.JSON),
                sa.column("owner"),
                sa.column("occurred_at", UTCDateTime(timezone=True)),
            )
            subscriptions = sa.table(
                "event_subscriptions",
                *(sa.column(name) for name in ("id", "department", "client_id", "purpose", "status")),
                sa.column("fields", sa.JSON),
                sa.column("start_position", sa.Integer),
                sa.column("fanout_position", sa.Integer),
                sa.column("created_at", UTCDateTime(timezone=True)),
            )
            deliveries = sa.table(
                "event_deliveries",
                *(sa.column(name) for name in ("id", "subscription_id", "status", "last_error")),
                sa.column("event_position", sa.Integer),
                sa.column("attempts", sa.Integer),
                sa.column("last_status_code", sa.Integer),
                *(
                    sa.column(name, UTCDateTime(timezone=True))
                    for name in ("next_attempt_at", "last_attempt_at", "delivered_at", "created_at")
                ),
            )
            # (id, status, last status code, last error, delivered): as 0018 left them.
            rows = [
                ("delivered", "delivered", 204, None, True),
                ("dead-answered", "dead", 500, "the receiver answered 500", False),
                ("dead-unreached", "dead", None, "could not reach the receiver: ConnectError", False),
                ("never-tried", "pending", None, None, False),
                (
                    "withheld",
                    "withheld",
                    None,
                    "withheld by policy: address: agreement a condition not met",
                    False,
                ),
                ("client-disabled", "withheld", None, "the subscribing client is disabled", False),
            ]
            engine = create_engine(url)
            try:
                async with engine.begin() as conn:
                    await conn.execute(
                        subscriptions.insert().values(
                            id="s",
                            department="dvla",
                            client_id="c",
                            purpose="p",
                            status="active",
                            fields=["address"],
                            start_position=0,
                            fanout_position=0,
                            created_at=when,
                        )
                    )
                    for position, (name, status, code, error, delivered) in enumerate(rows, start=1):
                        await conn.execute(
                            outbox.insert().values(
                                position=position,
                                event_id=f"e-{name}",
                                citizen_id="c1",
                                fields=["address"],
                                owner="register",
                                occurred_at=when,
                            )
                        )
                        await conn.execute(
                            deliveries.insert().values(
                                id=name,
                                subscription_id="s",
                                event_position=position,
                                status=status,
                                attempts=0 if name == "never-tried" else 1,
                                last_status_code=code,
                                last_error=error,
                                next_attempt_at=when,
                                created_at=when,
                                last_attempt_at=None if name == "never-tried" else when,
                                delivered_at=when if delivered else None,
                            )
                        )
                await upgrade_async(url)
                async with engine.connect() as conn:
                    found = {
                        row.id: (row.released_at is not None, row.last_error)
                        for row in await conn.execute(
                            sa.select(Delivery.id, Delivery.released_at, Delivery.last_error)
                        )
                    }
            finally:
                await engine.dispose()
            assert found == {
                "delivered": (True, None),
                "dead-answered": (True, "the receiver answered 500"),
                # Not known to have passed the audit before it failed: left unnamed.
                "dead-unreached": (False, "could not reach the receiver: ConnectError"),
                "never-tried": (False, None),
                "withheld": (False, "withheld by policy"),
                "client-disabled": (False, "the subscribing client is disabled"),
            }
        finally:
            await drop_scratch_database(url)


class TestConsentActions:
    """0020: each consent given before its terms named actions covers the actions of the
    agreement version in force when it was given (the newest stored at or before it), and
    none when that version was revoked or none was stored."""

    async def test_upgrade_fills_in_the_actions_of_the_version_in_force(self, database_url: str) -> None:
        url = await create_scratch_database(database_url)
        try:
            await asyncio.to_thread(command.downgrade, alembic_config(url), "0019_delivery_released")
            day = datetime(2026, 12, 1, tzinfo=UTC)
            # The consents table as 0019 left it: the model less the actions.
            consents = sa.table(
                "consents",
                *(sa.column(c.name, c.type) for c in Consent.__table__.c if c.name != "actions"),
            )
            # (agreement, version, status, actions, stored on day n)
            stored = [
                ("widened", 1, "active", ["verify"], 1),
                ("widened", 2, "active", ["read", "verify"], 3),
                ("revoked", 1, "active", ["read"], 1),
                ("revoked", 2, "revoked", ["read"], 2),
                ("later", 1, "active", ["read"], 5),
            ]
            # (consent, agreement, given on day n) -> the actions it covers after 0020
            given = {
                ("before-widening", "widened", 2): ["verify"],
                ("as-widened", "widened", 3): ["read", "verify"],
                ("after-widening", "widened", 4): ["read", "verify"],
                ("while-revoked", "revoked", 2): [],
                ("before-any-version", "later", 4): [],
                ("to-no-agreement", "unknown", 4): [],
            }
            engine = create_engine(url)
            try:
                async with engine.begin() as conn:
                    await conn.execute(sa.insert(Citizen).values(id="c", registered_by="r"))
                    for agreement, version, status, actions, on in stored:
                        await conn.execute(
                            sa.insert(AgreementVersion).values(
                                agreement_id=agreement,
                                owner="welfare",
                                version=version,
                                status=status,
                                content={"id": agreement, "actions": actions},
                                content_hash="h",
                                author="a",
                                reason="",
                                is_current=version == max(v for a, v, *_ in stored if a == agreement),
                                created_at=day.replace(day=on),
                            )
                        )
                    for consent_id, agreement, on in given:
                        await conn.execute(
                            consents.insert().values(
                                id=consent_id,
                                citizen_id="c",
                                agreement=agreement,
                                consumer="revenue",
                                purpose="p",
                                status="active",
                                signature="a.b.c",
                                fields=["benefit_status"],
                                created_at=day.replace(day=on),
                                updated_at=day.replace(day=on),
                            )
                        )
                await upgrade_async(url)
                async with engine.connect() as conn:
                    found = dict((await conn.execute(sa.select(Consent.id, Consent.actions))).all())
            finally:
                await engine.dispose()
            assert found == {consent_id: actions for (consent_id, _, _), actions in given.items()}
        finally:
            await drop_scratch_database(url)


class TestDowngrades:
    """Every downgrade runs on a database with rows in it, and undoes its upgrade."""

    async def test_down_to_base_and_up_again_with_rows(self, database_url: str) -> None:
        url = await create_scratch_database(database_url)
        try:
            made = await schema_at(url)
            await one_row_in_every_table(url)
            await asyncio.to_thread(command.downgrade, alembic_config(url), "base")
            assert set(await schema_at(url)) == {"alembic_version", "index definitions"}
            await upgrade_async(url)
            assert await schema_at(url) == made
            assert await differences_at(url) == []
        finally:
            await drop_scratch_database(url)

    async def test_each_revision_down_and_up_again_with_rows(self, database_url: str) -> None:
        # On SQLite, batch mode rebuilds a table by copying it and dropping the old one:
        # with foreign keys enforced, 0018's downgrade failed on event_subscriptions, which
        # deliveries refer to.
        url = await create_scratch_database(database_url)
        try:
            await one_row_in_every_table(url)
            revisions = revisions_oldest_first()
            for revision, below in zip(reversed(revisions), ["base", *revisions][-2::-1], strict=True):
                at = await schema_at(url)
                await asyncio.to_thread(command.downgrade, alembic_config(url), below)
                await asyncio.to_thread(command.upgrade, alembic_config(url), revision)
                assert await schema_at(url) == at, revision
                await asyncio.to_thread(command.downgrade, alembic_config(url), below)
            await upgrade_async(url)
            assert await differences_at(url) == []
        finally:
            await drop_scratch_database(url)


class TestUpgradeCommand:
    """`tellonce db upgrade` on a current database does nothing; on one a newer release
    migrated it refuses in one line."""

    def _upgrade(self, url: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "TELLONCE_DATABASE_URL": url, "TELLONCE_DATA_DIR": str(tmp_path / "data")}
        return subprocess.run(
            [sys.executable, "-m", "service.cli", "db", "upgrade"],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            check=False,
        )

    async def test_a_current_database_is_left_as_it_is(self, database_url: str, tmp_path: Path) -> None:
        url = await create_scratch_database(database_url)
        try:
            await one_row_in_every_table(url)
            before = await schema_at(url)
            result = await asyncio.to_thread(self._upgrade, url, tmp_path)
            assert (result.returncode, result.stdout, result.stderr) == (0, "database migrated to head\n", "")
            assert await schema_at(url) == before
            assert await differences_at(url) == []
        finally:
            await drop_scratch_database(url)

    async def test_a_database_from_a_newer_release_is_refused_in_one_line(
        self, database_url: str, tmp_path: Path
    ) -> None:
        url = await create_scratch_database(database_url)
        try:
            engine = create_engine(url)
            try:
                async with engine.begin() as conn:
                    await conn.execute(
                        text("UPDATE alembic_version SET version_num = '0099_from_the_future'")
                    )
            finally:
                await engine.dispose()
            result = await asyncio.to_thread(self._upgrade, url, tmp_path)
            assert result.returncode == 2, result.stderr
            assert result.stderr.splitlines() == [
                "tellonce: the database is at revision 0099_from_the_future, which this release does not "
                "know (a newer release migrated it): this release cannot migrate it; run the newer "
                "release, or restore the backup taken before its upgrade"
            ]
            engine = create_engine(url)
            try:
                async with engine.connect() as conn:
                    version = (
                        await conn.execute(text("SELECT version_num FROM alembic_version"))
                    ).scalar_one()
            finally:
                await engine.dispose()
            assert version == "0099_from_the_future"
        finally:
            await drop_scratch_database(url)
