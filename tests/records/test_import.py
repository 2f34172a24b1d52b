"""``tellonce import``: a department's existing records from a CSV or JSON Lines file.

On one committed store per module (the import commits batch by batch), with the records
tests' catalog. Each test makes its own national ids, so the tests share the store. What
is promised: rows stored as the API stores them (they read back through the access
path), one audit entry per citizen and a log that verifies, re-runs that change nothing,
update mode's new versions and change events, refused rows reported by line without
their values, columns a department may not write refused before anything is written,
and a run killed mid-file that resumes with every row stored exactly once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from rich.progress import Progress
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.audit import writer as audit_writer
from service.audit.checkpoint import NoteVerifier
from service.audit.cli import verify_database
from service.audit.errors import AuditUnavailable
from service.audit.models import AuditEntryRow
from service.audit.sequencer import Sequencer, SequencerConfig
from service.auth.facts import RequestFacts
from service.catalog import service as catalog_service
from service.config import Settings
from service.crypto.keyring import Keyring
from service.crypto.models import DataKeyRecord
from service.db import create_engine
from service.errors import ServiceError
from service.events.models import OutboxEvent
from service.policy.service import PolicyHolder
from service.records import import_files, import_worker, importing, reads, repository, seeding
from service.records.cli import _print_summary, _RejectFile, _RowsPerSecond
from service.records.import_files import ImportFormat
from service.records.models import Citizen, FieldValue, ImportRun
from service.records.service import RecordsService, registered_national_ids
from service.records.validation import NATIONAL_ID_FIELD
from tests.conftest import REPO_ROOT
from tests.fixtures.audit import make_signer, sequence_all
from tests.fixtures.databases import (
    SQLITE_PREFIX,
    create_scratch_database,
    drop_scratch_database,
    settings_on,
)
from tests.records.conftest import apply_policies, facts_as

ACTOR = "operator:importer"
WELFARE = facts_as("welfare", "consumer", purpose="benefit-eligibility")
# The owner of the national id, which may always read it.
REGISTER = facts_as("register", "consumer", purpose="civil-registration")
REGISTER_COLUMNS = ["national_id", "given_name", "date_of_birth", "address"]


@dataclass
class Store:
    url: str
    engine: AsyncEngine
    keyring: Keyring
    root_key: str


@asynccontextmanager
async def _scratch_store(base_url: str, settings: Settings, root_key: str) -> AsyncIterator[Store]:
    url = await create_scratch_database(base_url)
    apply_policies(url)
    engine = create_engine(url)
    try:
        yield Store(url, engine, Keyring.from_settings(settings), root_key)
    finally:
        await engine.dispose()
        await drop_scratch_database(url)


@pytest.fixture(scope="module")
async def store(database_url: str, settings: Settings, root_key: str) -> AsyncIterator[Store]:
    async with _scratch_store(database_url, settings, root_key) as made:
        yield made


@pytest.fixture
async def sqlite_store(settings: Settings, root_key: str) -> AsyncIterator[Store]:
    """A SQLite store in either pass: only SQLite guesses the next data-key ids."""
    async with _scratch_store(SQLITE_PREFIX, settings, root_key) as made:
        yield made


@dataclass
class Imported:
    report: importing.ImportReport
    rejections: list[importing.Rejection] = field(default_factory=list)


def _ids(count: int) -> list[str]:
    prefix = uuid.uuid4().hex[:8].upper()
    return [f"IM{prefix}{n:07d}" for n in range(count)]


def _person(national_id: str, n: int) -> dict[str, Any]:
    return {
        "national_id": national_id,
        "given_name": f"Imogen{n}",
        "date_of_birth": f"19{50 + n % 50}-0{1 + n % 9}-1{n % 10}",
        "address": f"{n} Import Lane",
    }


def _write_csv(path: Path, columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> Path:
    lines = [",".join(columns)]
    lines += [",".join(str(row.get(name, "")) for name in columns) for row in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def _write_jsonl(path: Path, lines: Sequence[Any]) -> Path:
    path.write_text(
        "\n".join(line if isinstance(line, str) else json.dumps(line) for line in lines) + "\n",
        encoding="utf-8",
    )
    return path


async def _import(
    store: Store,
    path: Path,
    department: str = "register",
    mode: importing.ImportMode = "register",
    file_format: ImportFormat = "csv",
    **options: Any,
) -> Imported:
    plan = await importing.plan_import(store.engine, path, file_format, department, mode)
    rejections: list[importing.Rejection] = []
    report = await importing.run_import(
        store.engine, store.keyring, plan, actor=ACTOR, on_rejections=rejections.extend, **options
    )
    return Imported(report, rejections)


async def _count(store: Store, statement: Any) -> int:
    async with store.engine.connect() as conn:
        return int((await conn.execute(statement)).scalar_one())


async def _lookup(store: Store, national_id: str) -> str:
    async with store.engine.connect() as conn:
        records = RecordsService.in_transaction(conn, store.keyring, PolicyHolder())
        return (await reads.lookup(records, WELFARE, national_id)).id


async def _read(
    store: Store, citizen_id: str, fields: list[str], facts: RequestFacts = WELFARE
) -> dict[str, Any]:
    async with store.engine.connect() as conn:
        records = RecordsService.in_transaction(conn, store.keyring, PolicyHolder())
        citizen = await reads.read(records, facts, citizen_id, fields)
        return {name: (out.value, out.version) for name, out in citizen.fields.items()}


async def _entries(store: Store, citizen_id: str) -> list[dict[str, Any]]:
    async with store.engine.connect() as conn:
        rows = await conn.execute(
            select(AuditEntryRow.canonical)
            .where(AuditEntryRow.citizen_id == citizen_id)
            .order_by(AuditEntryRow.id)
        )
        return [json.loads(canonical) for (canonical,) in rows]


def _cli_env(store: Store, data_dir: Path, actor: str = "importer") -> dict[str, str]:
    return {
        **os.environ,
        "TELLONCE_DATABASE_URL": store.url,
        "TELLONCE_ENV": "test",
        "TELLONCE_ROOT_KEY": store.root_key,
        "TELLONCE_DATA_DIR": str(data_dir),
        "TELLONCE_ACTOR": actor,
        "TELLONCE_LOG_LEVEL": "DEBUG",
    }


def _cli(
    store: Store, data_dir: Path, *args: str, actor: str = "importer"
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service.cli", "import", *args],
        env=_cli_env(store, data_dir, actor),
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


class TestRegisterMode:
    async def test_ten_thousand_rows_read_back_through_the_access_path(
        self, store: Store, tmp_path: Path
    ) -> None:
        people = [_person(national_id, n) for n, national_id in enumerate(_ids(10_000))]
        path = _write_csv(tmp_path / "people.csv", REGISTER_COLUMNS, people)

        imported = await _import(store, path, batch_size=2000)

        counts = imported.report.counts
        assert (counts.rows_read, counts.registered, counts.rejected) == (10_000, 10_000, 0)
        for person in (people[0], people[4321], people[-1]):
            citizen_id = await _lookup(store, person["national_id"])
            stored = await _read(store, citizen_id, ["given_name", "date_of_birth", "address"])
            assert stored == {name: (person[name], 1) for name in ("given_name", "date_of_birth", "address")}
            (entry,) = [e for e in await _entries(store, citizen_id) if e["action"] != "lookup"]
            assert (entry["action"], entry["client_id"], entry["department"]) == (
                "register",
                ACTOR,
                "register",
            )
            assert set(entry["fields_released"]) == set(REGISTER_COLUMNS)
            assert person["given_name"] not in json.dumps(entry)
            assert person["national_id"] not in json.dumps(entry)

    async def test_running_the_same_file_again_changes_nothing(self, store: Store, tmp_path: Path) -> None:
        people = [_person(national_id, n) for n, national_id in enumerate(_ids(300))]
        path = _write_csv(tmp_path / "people.csv", REGISTER_COLUMNS, people)
        await _import(store, path, batch_size=100)
        before = [
            await _count(store, select(func.count()).select_from(table))
            for table in (Citizen, FieldValue, AuditEntryRow, OutboxEvent)
        ]

        again = await _import(store, path, batch_size=100)
        resumed = await _import(store, path, batch_size=100, resume=True)

        assert (again.report.counts.unchanged, again.report.counts.registered) == (300, 0)
        assert resumed.report.already_finished
        after = [
            await _count(store, select(func.count()).select_from(table))
            for table in (Citizen, FieldValue, AuditEntryRow, OutboxEvent)
        ]
        assert after == before

    async def test_a_registered_citizen_with_other_values_is_refused_not_overwritten(
        self, store: Store, tmp_path: Path
    ) -> None:
        (national_id,) = _ids(1)
        first = _person(national_id, 1)
        await _import(store, _write_csv(tmp_path / "a.csv", REGISTER_COLUMNS, [first]))

        changed = {**first, "address": "9 Elsewhere"}
        imported = await _import(store, _write_csv(tmp_path / "b.csv", REGISTER_COLUMNS, [changed]))

        assert imported.rejections == [
            importing.Rejection(
                2, "already registered, with other values of address; write them with --mode update"
            )
        ]
        citizen_id = await _lookup(store, national_id)
        assert await _read(store, citizen_id, ["address"]) == {"address": (first["address"], 1)}


def _grouped(national_id: str, space: str = " ") -> str:
    """``national_id`` in groups of four, as a register's export might print it."""
    return space.join(national_id[n : n + 4] for n in range(0, len(national_id), 4))


class TestWhitespaceInsideNationalIds:
    """An import compares national ids as registration does: whitespace inside is not part
    of the id, so a spaced spelling is the same citizen (normalisation 3)."""

    async def test_a_spaced_repeat_in_the_file_is_refused_as_a_repeat(
        self, store: Store, tmp_path: Path
    ) -> None:
        first, second = _ids(2)
        rows = [
            _person(first, 0),
            _person(_grouped(second, "\u00a0"), 1),
            {**_person(_grouped(first), 2), "given_name": "Spaced"},
            {**_person(second, 3), "given_name": "Unspaced"},
        ]

        imported = await _import(store, _write_csv(tmp_path / "spaced.csv", REGISTER_COLUMNS, rows))

        repeat = f"{NATIONAL_ID_FIELD} repeats one on an earlier row of the file"
        assert imported.rejections == [importing.Rejection(4, repeat), importing.Rejection(5, repeat)]
        assert imported.report.counts.registered == 2
        # Stored in the normalised spelling, found by either.
        for national_id, n in ((first, 0), (second, 1)):
            citizen_id = await _lookup(store, national_id)
            assert await _lookup(store, _grouped(national_id)) == citizen_id
            stored = await _read(store, citizen_id, ["national_id", "given_name"], REGISTER)
            assert stored == {"national_id": (national_id, 1), "given_name": (f"Imogen{n}", 1)}

    async def test_a_spaced_spelling_of_a_registered_id_is_that_citizen(
        self, store: Store, tmp_path: Path
    ) -> None:
        same, other = _ids(2)
        await _import(
            store, _write_csv(tmp_path / "a.csv", REGISTER_COLUMNS, [_person(same, 0), _person(other, 1)])
        )
        citizens = [await _lookup(store, national_id) for national_id in (same, other)]
        rows = [
            _person(_grouped(same), 0),
            {**_person(_grouped(other, "\u2009"), 1), "address": "9 Elsewhere"},
        ]

        again = await _import(store, _write_csv(tmp_path / "b.csv", REGISTER_COLUMNS, rows))

        assert (again.report.counts.registered, again.report.counts.unchanged) == (0, 1)
        assert again.rejections == [
            importing.Rejection(
                3, "already registered, with other values of address; write them with --mode update"
            )
        ]
        licences = [{"national_id": _grouped(same.lower()), "licence_status": "valid"}]
        updated = await _import(
            store,
            _write_csv(tmp_path / "l.csv", ["national_id", "licence_status"], licences),
            "dvla",
            "update",
        )
        assert (updated.report.counts.updated, updated.rejections) == (1, [])
        assert await _read(store, citizens[0], ["licence_status"]) == {"licence_status": ("valid", 1)}


class TestDataKeysMadeAhead:
    """Register mode: the batches after the first are encrypted in the worker process
    under data keys made ahead, with ids guessed (SQLite) or drawn from the sequence
    (PostgreSQL) while the batch before is written, and stored only if they still hold."""

    @staticmethod
    def _spy(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
        stored: list[bool] = []
        store_ahead = seeding.store_registrations_ahead

        async def spy(*args: Any) -> bool:
            stored.append(await store_ahead(*args))
            return stored[-1]

        monkeypatch.setattr(seeding, "store_registrations_ahead", spy)
        return stored

    async def _assert_read_back(self, store: Store, people: Sequence[dict[str, Any]]) -> None:
        for person in people:
            citizen_id = await _lookup(store, person["national_id"])
            stored = await _read(store, citizen_id, ["given_name", "date_of_birth", "address"])
            assert stored == {name: (person[name], 1) for name in ("given_name", "date_of_birth", "address")}

    async def test_batches_after_the_first_are_stored_as_made_ahead(
        self, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        stored = self._spy(monkeypatch)
        people = [_person(national_id, n) for n, national_id in enumerate(_ids(300))]

        imported = await _import(
            store, _write_csv(tmp_path / "p.csv", REGISTER_COLUMNS, people), batch_size=100
        )

        assert imported.report.counts.registered == 300
        assert stored == [True, True]
        await self._assert_read_back(store, people[::50])

    async def test_a_wrong_key_id_guess_makes_the_batch_afresh(
        self, sqlite_store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # SQLite only (PostgreSQL's key ids are drawn from the sequence, never guessed), so
        # on a SQLite store in the PostgreSQL pass as well.
        store = sqlite_store
        stored = self._spy(monkeypatch)
        ahead = seeding.registrations_ahead

        def guesses_wrong(*args: Any, key_ids: Sequence[int]) -> seeding.RegistrationsAhead | None:
            # As if another writer had made a data key since the guess (this runs in the
            # worker process, forked after the patch).
            return ahead(*args, key_ids=[key_id + 1 for key_id in key_ids])

        monkeypatch.setattr(seeding, "registrations_ahead", guesses_wrong)
        people = [_person(national_id, n) for n, national_id in enumerate(_ids(300))]

        imported = await _import(
            store, _write_csv(tmp_path / "p.csv", REGISTER_COLUMNS, people), batch_size=100
        )

        assert imported.report.counts.registered == 300
        assert stored == [False, False]
        await self._assert_read_back(store, people[::50])

    async def test_keys_made_ahead_under_a_kek_rotated_since_are_made_afresh(
        self, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        stored = self._spy(monkeypatch)
        versions: list[int] = []
        answer = import_worker.BatchWorker.answer

        async def rotates_after_first(worker: import_worker.BatchWorker) -> Any:
            prepared = await answer(worker)
            if not versions:
                # A rotation commits after the worker wrapped batch 2's keys.
                async with store.engine.begin() as conn:
                    rotated = await store.keyring.create_kek_version(conn, "register")
                assert rotated is not None
                versions.append(rotated.version)
            return prepared

        monkeypatch.setattr(import_worker.BatchWorker, "answer", rotates_after_first)
        people = [_person(national_id, n) for n, national_id in enumerate(_ids(300))]

        imported = await _import(
            store, _write_csv(tmp_path / "p.csv", REGISTER_COLUMNS, people), batch_size=100
        )

        assert imported.report.counts.registered == 300
        # Batches 2 and 3 were made ahead under the old version: both stored afresh.
        assert stored == [False, False]
        await self._assert_read_back(store, people[::50])
        later = [await _lookup(store, person["national_id"]) for person in people[100::40]]
        wrapped_under = await _count(
            store,
            select(func.count()).where(
                DataKeyRecord.citizen_id.in_(later), DataKeyRecord.kek_version == versions[0]
            ),
        )
        assert wrapped_under == len(later)

    async def test_a_batch_with_registered_citizens_is_stored_afresh(
        self, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        people = [_person(national_id, n) for n, national_id in enumerate(_ids(300))]
        await _import(store, _write_csv(tmp_path / "a.csv", REGISTER_COLUMNS, people[:150]), batch_size=100)
        stored = self._spy(monkeypatch)

        imported = await _import(
            store, _write_csv(tmp_path / "b.csv", REGISTER_COLUMNS, people), batch_size=100
        )

        counts = imported.report.counts
        assert (counts.unchanged, counts.registered, counts.rejected) == (150, 150, 0)
        # Lines 102 to 201 hold 50 registered citizens: that batch is stored afresh.
        assert stored == [True]
        await self._assert_read_back(store, people[::25])


class TestSqliteSettings:
    """SQLite: each batch's connection gets a large page cache and a checkpoint only once
    the WAL is long (random citizen ids change a page per citizen in several indexes),
    and when the import ends the connection is back to SQLite's defaults and the WAL is
    folded into the database and truncated, never failing the import if it cannot be."""

    @staticmethod
    async def _settings(conn: AsyncConnection) -> tuple[int, int]:
        cache = (await conn.exec_driver_sql("PRAGMA cache_size")).scalar_one()
        checkpoint = (await conn.exec_driver_sql("PRAGMA wal_autocheckpoint")).scalar_one()
        return int(cache), int(checkpoint)

    async def test_a_batch_connection_gets_the_import_settings(self, sqlite_store: Store) -> None:
        async with sqlite_store.engine.connect() as conn:
            assert await self._settings(conn) == (
                -importing.SQLITE_DEFAULT_CACHE_KIB,
                importing.SQLITE_DEFAULT_CHECKPOINT_PAGES,
            )
            await importing._sqlite_for_import(conn)
            assert await self._settings(conn) == (
                -importing.SQLITE_IMPORT_CACHE_KIB,
                importing.SQLITE_IMPORT_CHECKPOINT_PAGES,
            )

    async def test_after_the_import_the_defaults_are_back_and_the_wal_is_empty(
        self, sqlite_store: Store, tmp_path: Path
    ) -> None:
        people = [_person(national_id, n) for n, national_id in enumerate(_ids(300))]

        imported = await _import(
            sqlite_store, _write_csv(tmp_path / "p.csv", REGISTER_COLUMNS, people), batch_size=100
        )

        assert imported.report.counts.registered == 300
        database = Path(sqlite_store.url.removeprefix(SQLITE_PREFIX))
        assert database.with_name(database.name + "-wal").stat().st_size == 0
        async with sqlite_store.engine.connect() as conn:
            assert await self._settings(conn) == (
                -importing.SQLITE_DEFAULT_CACHE_KIB,
                importing.SQLITE_DEFAULT_CHECKPOINT_PAGES,
            )
        assert await _lookup(sqlite_store, people[-1]["national_id"])

    async def test_a_reader_holding_a_snapshot_leaves_the_wal_but_not_a_failure(
        self, sqlite_store: Store, tmp_path: Path
    ) -> None:
        people = [_person(national_id, n) for n, national_id in enumerate(_ids(200))]
        reader = create_engine(sqlite_store.url)
        try:
            async with reader.connect() as conn:
                await conn.exec_driver_sql("BEGIN")
                # A read transaction: its snapshot keeps the WAL from being truncated.
                await conn.exec_driver_sql("SELECT count(*) FROM citizens")

                imported = await _import(
                    sqlite_store, _write_csv(tmp_path / "p.csv", REGISTER_COLUMNS, people), batch_size=100
                )

                assert imported.report.counts.registered == 200
                database = Path(sqlite_store.url.removeprefix(SQLITE_PREFIX))
                assert database.with_name(database.name + "-wal").stat().st_size > 0
                await conn.exec_driver_sql("ROLLBACK")
        finally:
            await reader.dispose()
        assert await _lookup(sqlite_store, people[0]["national_id"])


class TestWorkerProcess:
    """Register mode: batches after the first are read, checked and encrypted in a
    forked worker process; the importing process writes them in file order."""

    async def test_repeats_are_refused_across_the_worker_and_the_importer(
        self, store: Store, tmp_path: Path
    ) -> None:
        ids = _ids(300)
        people = [_person(national_id, n) for n, national_id in enumerate(ids)]
        # Line 152 (checked in the worker) repeats line 12 (checked here, batch 1), and
        # line 252 (the worker's second batch) repeats line 122 (its first).
        people[150] = _person(ids[10], 150)
        people[250] = {**_person(ids[120], 250), "given_name": "Repeated"}

        imported = await _import(
            store, _write_csv(tmp_path / "p.csv", REGISTER_COLUMNS, people), batch_size=100
        )

        repeat = "national_id repeats one on an earlier row of the file"
        assert imported.rejections == [importing.Rejection(152, repeat), importing.Rejection(252, repeat)]
        assert (imported.report.counts.registered, imported.report.counts.rejected) == (298, 2)
        citizen_id = await _lookup(store, ids[120])
        stored = await _read(store, citizen_id, ["given_name"])
        assert stored == {"given_name": (people[120]["given_name"], 1)}

    async def test_the_worker_dying_fails_the_import_and_keeps_what_committed(
        self, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        ids = _ids(500)
        path = _write_csv(tmp_path / "p.csv", REGISTER_COLUMNS, [_person(i, n) for n, i in enumerate(ids)])
        self._break_second_batch_in_worker(monkeypatch, lambda: os._exit(7))

        with pytest.raises(import_worker.WorkerFailed, match=r"ended unexpectedly \(exit code 7\)"):
            await asyncio.wait_for(_import(store, path, batch_size=100), 120)

        # Batch 1 (prepared here) and 2 (the worker's first) committed; none after.
        assert await TestResume._committed_line(store) == 201
        assert {i.casefold() for i in ids[:200]} == set(await self._registered(store, ids))

    @staticmethod
    async def _registered(store: Store, ids: list[str]) -> dict[str, str]:
        async with store.engine.connect() as conn:
            catalog = await catalog_service.current_cached(conn)
            return await registered_national_ids(conn, store.keyring, catalog, ids)

    async def test_an_exception_in_the_worker_is_named_without_its_text(
        self, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        ids = _ids(500)
        path = _write_csv(tmp_path / "p.csv", REGISTER_COLUMNS, [_person(i, n) for n, i in enumerate(ids)])

        def fails() -> None:
            raise ValueError(f"a message holding a value: {ids[250]}")

        self._break_second_batch_in_worker(monkeypatch, fails)

        with pytest.raises(import_worker.WorkerFailed) as raised:
            await asyncio.wait_for(_import(store, path, batch_size=100), 120)

        message = str(raised.value)
        assert message.startswith("preparing a batch failed in the import's worker process: ValueError at ")
        assert ids[250] not in message
        assert "holding" not in message
        assert len(await self._registered(store, ids)) == 200

    @staticmethod
    def _break_second_batch_in_worker(monkeypatch: pytest.MonkeyPatch, breaking: Any) -> None:
        importer = os.getpid()
        prepare = importing._Importer.prepare
        prepared_in_worker = 0

        def breaks(self: Any, *args: Any) -> Any:
            nonlocal prepared_in_worker
            if os.getpid() != importer:
                prepared_in_worker += 1
                if prepared_in_worker == 2:
                    breaking()
            return prepare(self, *args)

        monkeypatch.setattr(importing._Importer, "prepare", breaks)


class TestUpdateMode:
    async def test_changed_values_become_new_versions_with_events_and_write_entries(
        self, store: Store, tmp_path: Path
    ) -> None:
        ids = _ids(3)
        await _import(
            store, _write_csv(tmp_path / "people.csv", ["national_id"], [{"national_id": i} for i in ids])
        )
        citizens = [await _lookup(store, national_id) for national_id in ids]
        licences = [
            {"national_id": i, "licence_status": "valid", "licence_number": f"L{n}"}
            for n, i in enumerate(ids)
        ]
        columns = ["national_id", "licence_status", "licence_number"]

        first = await _import(store, _write_csv(tmp_path / "l1.csv", columns, licences), "dvla", "update")
        licences[1]["licence_status"] = "revoked"
        second = await _import(store, _write_csv(tmp_path / "l2.csv", columns, licences), "dvla", "update")

        assert first.report.counts.updated == 3
        assert (second.report.counts.updated, second.report.counts.unchanged) == (1, 2)
        assert await _read(store, citizens[1], ["licence_status", "licence_number"]) == {
            "licence_status": ("revoked", 2),
            "licence_number": ("L1", 1),
        }
        assert await _read(store, citizens[0], ["licence_status"]) == {"licence_status": ("valid", 1)}
        async with store.engine.connect() as conn:
            events = (
                await conn.execute(
                    select(OutboxEvent.citizen_id, OutboxEvent.fields, OutboxEvent.owner)
                    .where(OutboxEvent.citizen_id.in_(citizens))
                    .order_by(OutboxEvent.position)
                )
            ).all()
        assert len(events) == 4
        assert (events[-1].citizen_id, events[-1].fields, events[-1].owner) == (
            citizens[1],
            ["licence_status"],
            "dvla",
        )
        writes = [e for e in await _entries(store, citizens[1]) if e["action"] == "write"]
        assert [w["fields_released"] for w in writes] == [
            ["licence_status", "licence_number"],
            ["licence_status"],
        ]
        assert all(
            (w["department"], w["client_id"], w["decision"]) == ("dvla", ACTOR, "permit") for w in writes
        )

    async def test_an_unregistered_national_id_is_refused(self, store: Store, tmp_path: Path) -> None:
        (unknown,) = _ids(1)
        path = _write_csv(
            tmp_path / "l.csv", ["national_id", "points"], [{"national_id": unknown, "points": 3}]
        )

        imported = await _import(store, path, "dvla", "update")

        assert imported.rejections == [
            importing.Rejection(2, "no citizen is registered with this national_id")
        ]

    @pytest.mark.postgres
    async def test_a_citizen_erased_after_the_batch_found_them_is_refused_and_the_rest_imported(
        self,
        store: Store,
        tmp_path: Path,
        settings: Settings,
        on_postgres: bool,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """The erasure commits between the batch's lookup of the national ids and its
        reading of their stored values (the batch holds no lock the erasure waits for). The
        whole batch used to fail on the erased citizen's destroyed key."""
        if not on_postgres:
            pytest.skip(
                "needs PostgreSQL: on SQLite the batch holds the one write lock, so no erasure commits"
            )
        ids = _ids(3)
        await _import(
            store, _write_csv(tmp_path / "people.csv", ["national_id"], [{"national_id": i} for i in ids])
        )
        citizens = [await _lookup(store, national_id) for national_id in ids]
        columns = ["national_id", "licence_status"]
        licences = [{"national_id": i, "licence_status": "valid"} for i in ids]
        await _import(store, _write_csv(tmp_path / "l1.csv", columns, licences), "dvla", "update")
        erased = citizens[1]
        find = registered_national_ids

        async def erased_once_found(*args: Any) -> dict[str, str]:
            found = await find(*args)
            if erased in found.values():
                async with store.engine.begin() as conn:
                    assert await repository.mark_erased(conn, erased, datetime.now(UTC))
                    await Keyring.from_settings(settings).shred_citizen(conn, erased)
            return found

        monkeypatch.setattr(importing, "registered_national_ids", erased_once_found)
        for licence in licences:
            licence["licence_status"] = "revoked"
        # A process of its own, with none of the keys cached.
        racing = Store(store.url, store.engine, Keyring.from_settings(settings), store.root_key)

        imported = await _import(racing, _write_csv(tmp_path / "l2.csv", columns, licences), "dvla", "update")

        assert imported.rejections == [importing.Rejection(3, "the citizen was erased while the import ran")]
        assert (imported.report.counts.updated, imported.report.counts.rejected) == (2, 1)
        for citizen in (citizens[0], citizens[2]):
            assert await _read(store, citizen, ["licence_status"]) == {"licence_status": ("revoked", 2)}


class TestRefusedRows:
    async def test_each_refused_row_is_named_by_line_and_reason_without_its_value(
        self, store: Store, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        ids = _ids(3)
        rows = [
            _person(ids[0], 0),
            {**_person(ids[1], 1), "date_of_birth": "1970-02-31"},
            {**_person(ids[2], 2), "national_id": "SECRETLY" + "9" * 30},
            {**_person(ids[0], 3), "given_name": "Repeated"},
            {**_person(ids[2], 4), "national_id": ""},
            _person(ids[2], 5),
        ]
        path = _write_csv(tmp_path / "mixed.csv", REGISTER_COLUMNS, rows)
        caplog.set_level(logging.DEBUG)

        imported = await _import(store, path)

        assert imported.rejections == [
            importing.Rejection(3, "date_of_birth is not a real calendar date"),
            importing.Rejection(4, "national_id must be at most 20 characters"),
            importing.Rejection(5, "national_id repeats one on an earlier row of the file"),
            importing.Rejection(6, "national_id is required"),
        ]
        assert (imported.report.counts.registered, imported.report.counts.rejected) == (2, 4)
        for secret in ("1970-02-31", "SECRETLY", "Repeated"):
            assert secret not in caplog.text

    async def test_a_row_of_another_width_is_refused_by_its_count_of_cells(
        self, store: Store, tmp_path: Path
    ) -> None:
        ids = _ids(3)
        path = tmp_path / "ragged.csv"
        path.write_text(f"national_id,given_name\n{ids[0]},Ann\n{ids[1]},Bo,extra\n{ids[2]}\n")

        imported = await _import(store, path)

        assert imported.rejections == [
            importing.Rejection(3, "the row has 3 cells; the header has 2"),
            importing.Rejection(4, "the row has 1 cell; the header has 2"),
        ]
        assert (imported.report.counts.registered, imported.report.counts.rejected) == (1, 2)

    @pytest.mark.parametrize(
        ("cut", "lines"),
        [
            ('"12 Half Wri', ""),  # cut inside the last cell
            ('"12 Half Wri\nte Street\n', " (lines 3 to 4)"),  # inside a cell that spans lines
            ('"12 Half Wri""', ""),  # just after a doubled quote
        ],
    )
    async def test_a_file_cut_short_inside_a_quoted_cell_refuses_that_row(
        self, store: Store, tmp_path: Path, cut: str, lines: str
    ) -> None:
        # A truncated copy of an export: the csv reader, not strict, would hand back the
        # cell's first half as if it were the whole value.
        ids = _ids(2)
        path = tmp_path / "cut.csv"
        path.write_text(f"national_id,address\n{ids[0]},1 Whole Road\n{ids[1]},{cut}")
        rejects = tmp_path / "rejects.csv"

        result = _cli(store, tmp_path, "--department", "register", str(path), "--reject-file", str(rejects))

        assert result.returncode == 1, result.stderr
        assert "registered 1, updated 0, unchanged 0, rejected 1" in result.stdout
        assert rejects.read_text().splitlines() == [
            "line,reason",
            f"3,the file ends inside a quoted cell this row opens{lines}: is it cut short?",
        ]
        for value in ("Half", ids[1]):
            assert value not in result.stdout + result.stderr + rejects.read_text()
        with pytest.raises(ServiceError):
            await _lookup(store, ids[1])

    async def test_the_summary_counts_one_row_as_one_row(self, store: Store, tmp_path: Path) -> None:
        (national_id,) = _ids(1)
        path = _write_csv(tmp_path / "one.csv", REGISTER_COLUMNS, [_person(national_id, 0)])

        result = _cli(store, tmp_path, "--department", "register", str(path))

        assert result.returncode == 0, result.stderr
        assert "registered 1," in result.stdout
        assert "this run: 1 row in " in result.stdout

    async def test_the_command_exits_1_and_shows_no_value(self, store: Store, tmp_path: Path) -> None:
        ids = _ids(2)
        rows = [_person(ids[0], 0), {**_person(ids[1], 1), "date_of_birth": "31/12/1999"}]
        path = _write_csv(tmp_path / "cli.csv", REGISTER_COLUMNS, rows)
        rejects = tmp_path / "rejects.csv"

        result = _cli(store, tmp_path, "--department", "register", str(path), "--reject-file", str(rejects))

        assert result.returncode == 1, result.stderr
        assert "registered 1" in result.stdout
        assert "rejected 1" in result.stdout
        assert rejects.read_text().splitlines() == [
            "line,reason",
            "3,date_of_birth must be an ISO 8601 date (YYYY-MM-DD)",
        ]
        for value in ("31/12/1999", ids[1], "Imogen1"):
            assert value not in result.stdout + result.stderr

    async def test_each_refused_row_is_one_line_on_stderr_however_long_its_reason(
        self, store: Store, tmp_path: Path
    ) -> None:
        (national_id,) = _ids(1)
        await _import(store, _write_csv(tmp_path / "first.csv", REGISTER_COLUMNS, [_person(national_id, 0)]))
        path = _write_csv(tmp_path / "other.csv", REGISTER_COLUMNS, [_person(national_id, 1)])

        result = _cli(store, tmp_path, "--department", "register", str(path))

        assert result.returncode == 1, result.stderr
        reason = (
            "already registered, with other values of address, date_of_birth, given_name; "
            "write them with --mode update"
        )
        assert f"line 2: {reason}" in result.stderr.splitlines()

    @pytest.mark.parametrize(
        ("department", "columns", "message"),
        [
            (
                "register",
                ["national_id", "given_name", "shoe_size"],
                "columns that are not catalog fields: shoe_size",
            ),
            (
                "register",
                ["national_id", "points"],
                "columns of fields register does not own: points (owned by dvla)",
            ),
            ("register", ["given_name"], "no national_id column"),
            ("dvla", ["national_id", "points"], "only register registers citizens"),
        ],
    )
    async def test_columns_the_department_may_not_write_stop_it_before_any_row(
        self, store: Store, tmp_path: Path, department: str, columns: list[str], message: str
    ) -> None:
        (national_id,) = _ids(1)
        path = _write_csv(
            tmp_path / "bad.csv", columns, [{"national_id": national_id, "given_name": "X", "points": 1}]
        )
        runs_before = await _count(store, select(func.count()).select_from(ImportRun))

        result = _cli(store, tmp_path, "--department", department, str(path))

        assert result.returncode == 2
        assert message in result.stderr
        assert await _count(store, select(func.count()).select_from(ImportRun)) == runs_before

    async def test_a_file_without_a_header_shows_none_of_its_first_line(
        self, store: Store, tmp_path: Path
    ) -> None:
        (national_id,) = _ids(1)
        path = tmp_path / "headless.csv"
        path.write_text(f"{national_id},Philippa,1961-04-30,7 Secret Row\n", encoding="utf-8")

        result = _cli(store, tmp_path, "--department", "register", str(path))

        assert result.returncode == 2
        assert "no national_id column" in result.stderr
        for value in (national_id, "Philippa", "1961-04-30", "Secret"):
            assert value not in result.stdout + result.stderr

    async def test_column_names_that_may_be_values_or_control_sequences_are_not_shown(
        self, store: Store, tmp_path: Path
    ) -> None:
        national_id, other = _ids(2)
        # One object of a JSON Lines file keyed by a value: a national id, and a name.
        keyed = tmp_path / "keyed.jsonl"
        keyed.write_text(
            json.dumps({"national_id": national_id, "given_name": "X"})
            + "\n"
            + json.dumps({"national_id": national_id, other: "Q", "shoe_size": 4, "Sensitive Name": 1})
            + "\n",
            encoding="utf-8",
        )
        result = _cli(store, tmp_path, "--department", "register", "--format", "jsonl", str(keyed))
        assert result.returncode == 2
        assert (
            "columns that are not catalog fields: shoe_size, 2 not of a field name's form "
            "(not shown, in case they hold values)"
        ) in result.stderr
        for value in (other, "Sensitive Name"):
            assert value not in result.stdout + result.stderr
        # A header whose name would clear the terminal and set its title.
        escaping = tmp_path / "escaping.csv"
        escaping.write_text("national_id,given_name,\x1b[2J\x1b]0;owned\x07x,shoe_size\n", encoding="utf-8")
        result = _cli(store, tmp_path, "--department", "register", str(escaping))
        assert result.returncode == 2
        assert "\x1b" not in result.stdout + result.stderr
        assert "owned" not in result.stderr
        assert "not catalog fields: shoe_size, 1 not of a field name's form" in result.stderr

    async def test_a_cell_beyond_the_csv_readers_limit_stops_it_in_one_line(
        self, store: Store, tmp_path: Path
    ) -> None:
        (national_id,) = _ids(1)
        path = tmp_path / "huge.csv"
        path.write_text(f"national_id,address\n{national_id},Secret{'x' * (17 << 20)}\n", encoding="utf-8")
        runs_before = await _count(store, select(func.count()).select_from(ImportRun))

        result = _cli(store, tmp_path, "--department", "register", str(path))

        assert result.returncode == 2
        message = " ".join(result.stderr.split())
        assert message == (
            "tellonce import: the CSV file cannot be read at line 2: field larger than field limit (16777216)"
        )
        assert "Secret" not in result.stdout + result.stderr
        assert await _count(store, select(func.count()).select_from(ImportRun)) == runs_before

    async def test_a_pipe_is_refused_as_such_rather_than_as_a_file_without_a_header(
        self, store: Store, tmp_path: Path
    ) -> None:
        """The file is read more than once (checked, then imported): a pipe's rows would be
        gone by the second reading."""
        (national_id,) = _ids(1)
        fifo = tmp_path / "people.fifo"
        os.mkfifo(fifo)
        source = _write_csv(tmp_path / "people.csv", REGISTER_COLUMNS, [_person(national_id, 0)])
        feeding = subprocess.Popen(["sh", "-c", 'cat "$1" > "$2"', "sh", str(source), str(fifo)])
        try:
            result = _cli(store, tmp_path, "--department", "register", str(fifo))
        finally:
            feeding.kill()
            feeding.wait()

        assert result.returncode == 2
        assert result.stderr.strip() == (
            "tellonce import: the file is not a regular file (a pipe?): it is read more than once"
        )

    async def test_a_csv_file_read_as_json_lines_is_named_as_such(self, store: Store, tmp_path: Path) -> None:
        (national_id,) = _ids(1)
        path = _write_csv(tmp_path / "p.csv", ["national_id", "given_name"], [{"national_id": national_id}])

        result = _cli(store, tmp_path, "--department", "register", "--format", "jsonl", str(path))

        assert result.returncode == 2
        message = " ".join(result.stderr.split())
        assert "no national_id key (a JSON Lines file holds one object per line" in message
        assert "CSV" not in message
        assert national_id not in result.stdout + result.stderr
        # The department is checked first, whatever the format.
        unknown = _cli(store, tmp_path, "--department", "nosuch", "--format", "jsonl", str(path))
        assert unknown.returncode == 2
        assert "no department 'nosuch' in the catalog" in unknown.stderr


class TestLongLines:
    """A line is read whole by the CSV and JSON readers: one longer than
    ``MAX_LINE_CHARACTERS`` stops the import while the file is scanned, chunk by chunk,
    before any reader holds it."""

    @pytest.mark.parametrize("file_format", ["csv", "jsonl"])
    async def test_a_line_over_64_mi_characters_stops_it_in_one_line(
        self, store: Store, tmp_path: Path, file_format: ImportFormat
    ) -> None:
        (national_id,) = _ids(1)
        path = tmp_path / f"long.{file_format}"
        # Cells (values) each within the CSV reader's limit: before, the line was read
        # whole and its row refused (exit 1).
        cell = "Secret" + "x" * (15 << 20)
        with path.open("w", encoding="utf-8") as handle:
            if file_format == "csv":
                handle.write("national_id,given_name,address,postcode,gender,place_of_birth\n")
                handle.write(f"{national_id},{cell},{cell},{cell},{cell},{cell}\n")
            else:
                handle.write(json.dumps({"national_id": national_id, "address": cell * 5}) + "\n")
        runs_before = await _count(store, select(func.count()).select_from(ImportRun))

        result = _cli(store, tmp_path, "--department", "register", "--format", file_format, str(path))

        assert result.returncode == 2, result.stderr[-2000:]
        message = " ".join(result.stderr.split())
        line = 2 if file_format == "csv" else 1
        assert message == (
            f"tellonce import: line {line} of the file is longer than 67,108,864 characters "
            "(64 Mi); no row can be that long"
        )
        assert "Secret" not in result.stdout + result.stderr
        assert await _count(store, select(func.count()).select_from(ImportRun)) == runs_before

    @pytest.mark.parametrize(
        ("file_format", "text", "refused_line"),
        [
            # Characters, not bytes: "é" is two bytes.
            ("jsonl", "a\n" + "é" * 10 + "\nb\n", None),
            ("jsonl", "a\n" + "é" * 11 + "\nb\n", 2),
            ("jsonl", "é" * 11, 1),
            # The CSV reader ends a line at CR, LF or CRLF; JSON Lines only at LF.
            ("csv", "a\r" + "x" * 10 + "\r\n" + "y" * 10 + "\rb\n", None),
            ("csv", "a\r\nb\r" + "x" * 11 + "\r\n", 3),
            ("jsonl", "a\r" + "x" * 10 + "\n", 1),
        ],
    )
    def test_the_limit_counts_characters_across_chunks(
        self,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        file_format: ImportFormat,
        text: str,
        refused_line: int | None,
    ) -> None:
        monkeypatch.setattr(import_files, "MAX_LINE_CHARACTERS", 10)
        monkeypatch.setattr(import_files, "_CHUNK", 3)  # lines, and characters, split between chunks
        path = tmp_path / "lines"
        path.write_bytes(text.encode())
        if refused_line is None:
            import_files.check_line_lengths(path, file_format)
        else:
            with pytest.raises(
                import_files.ImportFileError, match=f"^line {refused_line} of the file is longer"
            ):
                import_files.check_line_lengths(path, file_format)


class TestRate:
    """Rows per second are shown once a run has taken ``MIN_SECONDS_FOR_A_RATE``; a
    tiny file is done in milliseconds, and "0 rows/s" or "50,000 rows/s" would say nothing."""

    @pytest.mark.parametrize(
        ("rows", "elapsed", "rate"), [(3, 0.0, None), (3, 0.004, None), (3, 0.999, None), (3000, 2.0, 1500.0)]
    )
    def test_the_summary_rate_needs_a_second(self, rows: int, elapsed: float, rate: float | None) -> None:
        report = importing.ImportReport(importing.ImportCounts(), rows_this_run=rows, elapsed=elapsed)
        assert report.rows_per_second == rate

    @pytest.mark.parametrize(
        ("elapsed", "said"),
        [(0.004, "this run: 3 rows in 0.0 s\n"), (2.0, "this run: 3 rows in 2.0 s (2 rows/s)\n")],
    )
    def test_the_summary_says_the_rate_only_when_there_is_one(
        self, capsys: pytest.CaptureFixture[str], elapsed: float, said: str
    ) -> None:
        _print_summary(
            importing.ImportReport(importing.ImportCounts(rows_read=3), rows_this_run=3, elapsed=elapsed)
        )
        assert capsys.readouterr().out.endswith(said)

    def test_the_progress_bar_shows_a_rate_once_there_is_one(self) -> None:
        now = [0.0]
        progress = Progress(get_time=lambda: now[0])
        task_id = progress.add_task("import", total=10_000)
        (task,) = progress.tasks
        column = _RowsPerSecond()
        progress.update(task_id, completed=0)
        assert column.render(task).plain == ""
        now[0] = 0.5
        progress.update(task_id, completed=500)
        assert column.render(task).plain == ""  # a rate, over half a second only
        now[0] = 2.0
        progress.update(task_id, completed=2000)
        assert column.render(task).plain == "1,000 rows/s"


class TestRejectFile:
    async def test_the_file_being_imported_is_refused_as_the_reject_file_and_kept(
        self, store: Store, tmp_path: Path
    ) -> None:
        ids = _ids(2)
        rows = [_person(ids[0], 0), {**_person(ids[1], 1), "date_of_birth": "bad"}]
        path = _write_csv(tmp_path / "people.csv", REGISTER_COLUMNS, rows)
        original = path.read_bytes()
        runs_before = await _count(store, select(func.count()).select_from(ImportRun))

        result = _cli(store, tmp_path, "--department", "register", str(path), "--reject-file", str(path))

        assert result.returncode == 2
        assert "the reject file is the file being imported" in result.stderr
        assert "Traceback" not in result.stderr
        assert path.read_bytes() == original
        assert await _count(store, select(func.count()).select_from(ImportRun)) == runs_before

    async def test_is_readable_by_its_owner_only_whether_new_or_overwritten(
        self, store: Store, tmp_path: Path
    ) -> None:
        ids = _ids(4)
        rejects = tmp_path / "rejects.csv"
        for n, existing in enumerate((False, True)):
            if existing:
                rejects.write_text("old\n", encoding="utf-8")
                rejects.chmod(0o644)
            rows = [_person(ids[2 * n], 0), {**_person(ids[2 * n + 1], 1), "date_of_birth": "bad"}]
            path = _write_csv(tmp_path / f"people{n}.csv", REGISTER_COLUMNS, rows)

            result = _cli(
                store, tmp_path, "--department", "register", str(path), "--reject-file", str(rejects)
            )

            assert result.returncode == 1, result.stderr
            assert stat.S_IMODE(rejects.stat().st_mode) == 0o600
            assert rejects.read_text().splitlines()[1:] == [
                "3,date_of_birth must be an ISO 8601 date (YYYY-MM-DD)"
            ]

    @pytest.mark.parametrize("where", ["missing/rejects.csv", "."])
    async def test_one_that_cannot_be_written_stops_it_before_any_row_in_one_line(
        self, store: Store, tmp_path: Path, where: str
    ) -> None:
        (national_id,) = _ids(1)
        path = _write_csv(tmp_path / "people.csv", REGISTER_COLUMNS, [_person(national_id, 0)])
        runs_before = await _count(store, select(func.count()).select_from(ImportRun))

        result = _cli(
            store, tmp_path, "--department", "register", str(path), "--reject-file", str(tmp_path / where)
        )

        assert result.returncode == 2
        assert result.stderr.startswith("tellonce import: cannot write the reject file")
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
        assert await _count(store, select(func.count()).select_from(ImportRun)) == runs_before

    @pytest.mark.parametrize("dangling", [False, True])
    async def test_a_symbolic_link_is_refused_and_its_target_left_as_it_is(
        self, store: Store, tmp_path: Path, dangling: bool
    ) -> None:
        """Opened for writing, the link's target was emptied and made 0600 (or made)."""
        ids = _ids(2)
        rows = [_person(ids[0], 0), {**_person(ids[1], 1), "date_of_birth": "bad"}]
        path = _write_csv(tmp_path / "people.csv", REGISTER_COLUMNS, rows)
        target = tmp_path / "elsewhere.txt"
        if not dangling:
            target.write_text("kept\n", encoding="utf-8")
            target.chmod(0o644)
        link = tmp_path / "rejects.csv"
        link.symlink_to(target)
        runs_before = await _count(store, select(func.count()).select_from(ImportRun))

        result = _cli(store, tmp_path, "--department", "register", str(path), "--reject-file", str(link))

        assert result.returncode == 2
        assert result.stderr.strip() == (
            "tellonce import: the reject file is a symbolic link: name the file itself"
        )
        if dangling:
            assert not target.exists()
        else:
            assert target.read_text(encoding="utf-8") == "kept\n"
            assert stat.S_IMODE(target.stat().st_mode) == 0o644
        assert await _count(store, select(func.count()).select_from(ImportRun)) == runs_before

    def test_a_link_put_in_its_place_after_the_check_is_not_followed(self, tmp_path: Path) -> None:
        target = tmp_path / "elsewhere.txt"
        target.write_text("kept\n", encoding="utf-8")
        link = tmp_path / "rejects.csv"
        link.symlink_to(target)
        with pytest.raises(OSError, match="symbolic links"):
            _RejectFile(link, keep_up_to_line=None)
        assert target.read_text(encoding="utf-8") == "kept\n"

    def test_one_to_resume_that_is_not_utf8_is_refused_and_left_as_it_is(self, tmp_path: Path) -> None:
        rejects = tmp_path / "rejects.csv"
        rejects.write_bytes(b"line,reason\n3,\xff\xfe not text\n")
        with pytest.raises(importing.ImportRefused, match="not one an import wrote"):
            _RejectFile(rejects, keep_up_to_line=10)
        assert rejects.read_bytes() == b"line,reason\n3,\xff\xfe not text\n"


class TestJsonLines:
    async def test_typed_values_and_unreadable_lines(self, store: Store, tmp_path: Path) -> None:
        ids = _ids(4)
        await _import(
            store, _write_csv(tmp_path / "p.csv", ["national_id"], [{"national_id": i} for i in ids])
        )
        path = _write_jsonl(
            tmp_path / "dvla.jsonl",
            [
                {"national_id": ids[0], "points": 6, "licence_status": "valid"},
                {"national_id": ids[1], "points": "6"},
                "{not json",
                "",
                [ids[2]],
                {"national_id": ids[3], "licence_status": None},
            ],
        )

        imported = await _import(store, path, "dvla", "update", "jsonl")

        assert imported.report.counts.updated == 1
        assert imported.rejections == [
            importing.Rejection(2, "points must be an integer"),
            importing.Rejection(3, "the line is not valid JSON"),
            importing.Rejection(5, "the line is not a JSON object"),
            importing.Rejection(6, "licence_status: a value is required (null cannot be written)"),
        ]

    async def test_a_last_line_cut_short_is_refused_not_imported(self, store: Store, tmp_path: Path) -> None:
        ids = _ids(2)
        whole = json.dumps({"national_id": ids[1], "given_name": "Half Written"})
        path = tmp_path / "cut.jsonl"
        for cut in (len(whole) - 1, whole.index("Half") + 4, whole.index('"given_name"')):
            path.write_text(json.dumps({"national_id": ids[0], "given_name": "Al"}) + "\n" + whole[:cut])

            imported = await _import(store, path, file_format="jsonl")

            assert imported.rejections == [importing.Rejection(2, "the line is not valid JSON")]
            with pytest.raises(ServiceError):
                await _lookup(store, ids[1])

    async def test_a_line_naming_a_column_twice_is_refused_whole(self, store: Store, tmp_path: Path) -> None:
        ids = _ids(3)
        path = tmp_path / "twice.jsonl"
        path.write_text(
            "\n".join(
                [
                    # Two national ids: the parser would keep the second, another citizen.
                    f'{{"national_id": "{ids[0]}", "given_name": "Al", "national_id" : "{ids[1]}"}}',
                    # A value holding what ends a key is no repeat.
                    json.dumps({"national_id": ids[2], "given_name": 'Al ":'}),
                ]
            )
            + "\n"
        )

        imported = await _import(store, path, file_format="jsonl")

        assert imported.rejections == [importing.Rejection(1, "the line names a column more than once")]
        assert imported.report.counts.registered == 1

    async def test_a_byte_order_mark_and_crlf_line_ends_are_read_as_in_csv(
        self, store: Store, tmp_path: Path
    ) -> None:
        ids = _ids(2)
        path = tmp_path / "bom.jsonl"
        lines = [json.dumps({"national_id": i, "given_name": "Bo"}) for i in ids]
        path.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n")

        imported = await _import(store, path, file_format="jsonl")

        assert imported.rejections == []
        assert imported.report.counts.registered == 2
        assert await _read(store, await _lookup(store, ids[0]), ["given_name"]) == {"given_name": ("Bo", 1)}

    async def test_csv_cells_take_their_fields_types(self, store: Store, tmp_path: Path) -> None:
        ids = _ids(2)
        await _import(
            store, _write_csv(tmp_path / "p.csv", ["national_id"], [{"national_id": i} for i in ids])
        )
        columns = ["national_id", "points", "licence_status"]
        rows: list[dict[str, Any]] = [
            {"national_id": ids[0], "points": 6, "licence_status": "valid"},
            {"national_id": ids[1], "points": "six"},
        ]

        imported = await _import(store, _write_csv(tmp_path / "d.csv", columns, rows), "dvla", "update")

        assert imported.rejections == [importing.Rejection(3, "points must be an integer")]
        assert imported.report.counts.updated == 1
        citizen_id = await _lookup(store, ids[0])
        assert await _read(store, citizen_id, ["licence_status"]) == {"licence_status": ("valid", 1)}


class TestCsvIntegers:
    async def test_a_cell_of_thousands_of_digits_is_refused_as_out_of_range(
        self, store: Store, tmp_path: Path
    ) -> None:
        """Not a ValueError from Python's limit on converting long digit strings, which
        stopped the import."""
        ids = _ids(3)
        await _import(
            store, _write_csv(tmp_path / "p.csv", ["national_id"], [{"national_id": i} for i in ids])
        )
        rows = [
            {"national_id": ids[0], "points": "9" * 5000},
            {"national_id": ids[1], "points": "-" + "9" * 17},
            {"national_id": ids[2], "points": "0" * 30 + "7"},
        ]

        imported = await _import(
            store, _write_csv(tmp_path / "d.csv", ["national_id", "points"], rows), "dvla", "update"
        )

        assert imported.rejections == [
            importing.Rejection(2, "points is out of range"),
            importing.Rejection(3, "points is out of range"),
        ]
        # Leading zeros are not digits of the value: 7 is written.
        assert imported.report.counts.updated == 1

    async def test_a_cell_with_a_line_break_after_its_digits_is_not_an_integer(
        self, store: Store, tmp_path: Path
    ) -> None:
        """Read as the API reads "6\\n": text, refused, not silently the integer 6."""
        (national_id,) = _ids(1)
        await _import(store, _write_csv(tmp_path / "p.csv", ["national_id"], [{"national_id": national_id}]))
        path = tmp_path / "d.csv"
        path.write_text(f'national_id,points\n{national_id},"6\n"\n', encoding="utf-8")

        imported = await _import(store, path, "dvla", "update")

        assert imported.rejections == [importing.Rejection(2, "points must be an integer")]
        assert imported.report.counts.updated == 0


class TestResume:
    async def test_killed_mid_file_then_resumed_stores_every_row_exactly_once(
        self, store: Store, tmp_path: Path
    ) -> None:
        ids = _ids(6000)
        people = [_person(national_id, n) for n, national_id in enumerate(ids)]
        people[4500]["date_of_birth"] = "not a date"
        path = _write_csv(tmp_path / "big.csv", REGISTER_COLUMNS, people)
        rejects = tmp_path / "rejects.csv"
        command = [sys.executable, "-m", "service.cli", "import", "--department", "register", str(path)]
        command += ["--reject-file", str(rejects), "--batch-size", "250"]
        process = subprocess.Popen(
            command,
            env=_cli_env(store, tmp_path, "resumer"),
            cwd=REPO_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            deadline = time.monotonic() + 60
            while await self._committed_line(store) < 500:
                assert process.poll() is None, "the import ended before it could be killed"
                assert time.monotonic() < deadline
                time.sleep(0.02)
            # Past the first batch: the worker process preparing batches is running.
            workers = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
            process.send_signal(signal.SIGKILL)
        finally:
            process.wait(timeout=30)
        assert workers
        # The worker sees its parent gone and ends: none is left behind.
        deadline = time.monotonic() + 30
        while any(_running(pid) for pid in workers):
            assert time.monotonic() < deadline, "the import's worker outlived the killed import"
            time.sleep(0.05)
        killed_at = await self._committed_line(store)
        assert 0 < killed_at < 6001

        result = _cli(
            store,
            tmp_path,
            "--department",
            "register",
            str(path),
            "--reject-file",
            str(rejects),
            "--resume",
            actor="resumer",
        )

        assert result.returncode == 1, result.stderr
        assert f"resumed after line {killed_at}" in result.stdout
        assert "rows read 6,000, registered 5,999, updated 0, unchanged 0, rejected 1" in result.stdout
        assert rejects.read_text().splitlines() == [
            "line,reason",
            "4502,date_of_birth must be an ISO 8601 date (YYYY-MM-DD)",
        ]
        async with store.engine.connect() as conn:
            catalog = await catalog_service.current_cached(conn)
            found = await registered_national_ids(conn, store.keyring, catalog, ids)
            imported = select(Citizen.id).where(Citizen.registered_by == "operator:resumer")
            entries = (
                await conn.execute(
                    select(func.count(), func.count(func.distinct(AuditEntryRow.citizen_id))).where(
                        AuditEntryRow.action == "register", AuditEntryRow.citizen_id.in_(imported)
                    )
                )
            ).one()
            national_ids = (
                await conn.execute(
                    select(func.count()).where(
                        FieldValue.field == "national_id", FieldValue.citizen_id.in_(imported)
                    )
                )
            ).scalar_one()
        assert len(found) == 5999
        assert ids[4500].casefold() not in found
        assert tuple(entries) == (5999, 5999)
        assert national_ids == 5999

    async def test_resume_without_an_earlier_run_says_so_and_imports_from_the_start(
        self, store: Store, tmp_path: Path
    ) -> None:
        ids = _ids(2)
        path = _write_csv(tmp_path / "new.csv", REGISTER_COLUMNS, [_person(i, n) for n, i in enumerate(ids)])
        notice = (
            "tellonce import: no earlier run of this file (for this department and mode) to resume; "
            "importing from the start"
        )

        first = _cli(store, tmp_path, "--department", "register", str(path), "--resume")
        again = _cli(store, tmp_path, "--department", "register", str(path), "--resume")

        assert first.returncode == 0, first.stderr
        assert notice in first.stderr
        assert "resumed after line" not in first.stdout
        assert "rows read 2, registered 2," in first.stdout
        # An earlier run exists now: it is resumed (finished already), with no notice.
        assert again.returncode == 0, again.stderr
        assert notice not in again.stderr
        assert "this file was imported already; nothing to do" in again.stdout

    async def test_a_failed_batch_commits_nothing_after_it(
        self, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        ids = _ids(500)
        path = _write_csv(tmp_path / "p.csv", REGISTER_COLUMNS, [_person(i, n) for n, i in enumerate(ids)])
        append = audit_writer.append_rows_in_transaction
        appended = 0

        async def fails_third(conn: AsyncConnection, rows: Sequence[audit_writer.Values]) -> list[int]:
            # Batches append in file order: the third (lines 202 to 301) cannot be audited.
            nonlocal appended
            appended += 1
            if appended == 3:
                raise AuditUnavailable("The audit entries could not be written.")
            return await append(conn, rows)

        monkeypatch.setattr(audit_writer, "append_rows_in_transaction", fails_third)

        with pytest.raises(AuditUnavailable):
            await _import(store, path, batch_size=100)

        # Batches 1 and 2 (lines 2 to 201) committed; the 4th, in flight on PostgreSQL
        # (or made ready on SQLite) while the 3rd failed, did not.
        async with store.engine.connect() as conn:
            catalog = await catalog_service.current_cached(conn)
            found = await registered_national_ids(conn, store.keyring, catalog, ids)
        assert await self._committed_line(store) == 201
        assert len(found) == 200
        assert {i.casefold() for i in ids[:200]} == set(found)

    @staticmethod
    async def _committed_line(store: Store) -> int:
        async with store.engine.connect() as conn:
            line = (
                await conn.execute(
                    select(func.max(ImportRun.last_line)).where(ImportRun.finished_at.is_(None))
                )
            ).scalar_one_or_none()
        return int(line or 0)


def _running(pid: str) -> bool:
    """Whether the process exists and has not exited (a zombie waits only to be reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


class TestAuditAfterImport:
    async def test_the_log_verifies(self, store: Store, tmp_path: Path) -> None:
        ids = _ids(200)
        await _import(
            store,
            _write_csv(tmp_path / "p.csv", REGISTER_COLUMNS, [_person(i, n) for n, i in enumerate(ids)]),
        )
        licences = [{"national_id": i, "points": n % 12} for n, i in enumerate(ids)]
        await _import(
            store, _write_csv(tmp_path / "d.csv", ["national_id", "points"], licences), "dvla", "update"
        )
        signer = make_signer()

        # Every entry of the module's imports, in large batches (the fixture's are tiny).
        config = SequencerConfig(
            origin=signer.name, checkpoint_every=4096, checkpoint_interval=3600, batch_size=2048
        )
        await sequence_all(Sequencer(store.engine, signer, config))

        entries = await _count(store, select(func.count()).select_from(AuditEntryRow))
        assert (
            await verify_database(settings_on(store.url), NoteVerifier.parse(signer.verifier_key()))
            == entries
        )
