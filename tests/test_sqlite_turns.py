"""Writers on a SQLite file take turns for its one write lock (``service/sqlite_turns.py``).

They used to race for it in SQLite's busy handler, which keeps no queue: under the demo's
load the witness submitter's round (its engine waits 250 ms for the lock) failed with
"database is locked" (SQLITE_BUSY) while field writes held the lock, and a field write once
waited out its 10 s and answered 503. The same tests run on PostgreSQL, where a write of
other rows has nothing to wait for.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy import func, insert, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.app import create_app
from service.audit import cosignatures as cosignature_repository
from service.audit.config import AuditSettings, load_signer
from service.audit.models import AuditEntryRow
from service.audit.service import _sequencer_engine
from service.audit.witnessing import WitnessSubmitter, witness_config
from service.audit.writer import AuditWriter
from service.auth import service as auth_service
from service.config import Settings
from service.db import Database, create_engine, sqlite_file
from service.policy import service as policy_service
from service.policy.loader import load_policy_folder
from service.records import repository as records_repository
from service.records.models import Citizen
from service.sqlite_turns import turns_for
from tests.audit.conftest import poll
from tests.conftest import TEST_POLICIES
from tests.fixtures.audit import make_entry
from tests.fixtures.databases import create_scratch_database, drop_scratch_database
from tests.fixtures.witnesses import WitnessProcess, running_witnesses

WITNESS_NAMES = ("nao.example/witness", "ico.example/witness")
# How long a test's write holds the lock: four times the witness submitter's 250 ms.
HOLD_SECONDS = 1.0


def _holds_nothing_on(engine: AsyncEngine) -> bool:
    path = sqlite_file(engine)
    return path is None or not turns_for(path).taken


class TestTurns:
    async def test_a_writer_waits_for_the_turn_longer_than_its_busy_timeout(
        self, scratch_database: str, settings: Settings
    ) -> None:
        engine = create_engine(scratch_database)
        # The sequencer's engine: SQLite's busy handler would give up after 250 ms.
        impatient = _sequencer_engine(settings.model_copy(update={"database_url": scratch_database}))
        try:
            async with engine.begin() as conn:
                await conn.execute(update(Citizen).where(Citizen.id == "nobody").values(version=1))

                async def write() -> None:
                    async with impatient.begin() as other:
                        await other.execute(
                            update(Citizen).where(Citizen.id == "nobody either").values(version=1)
                        )

                waiting = asyncio.create_task(write())
                await asyncio.wait({waiting}, timeout=HOLD_SECONDS)
            await waiting
            assert _holds_nothing_on(engine)
        finally:
            await impatient.dispose()
            await engine.dispose()

    async def test_a_failed_write_gives_its_turn_back(self, scratch_database: str) -> None:
        engine = create_engine(scratch_database)
        try:
            with pytest.raises(IntegrityError):
                async with engine.begin() as conn:
                    await conn.execute(insert(Citizen).values(id="c1"))  # NOT NULL columns missing
            assert _holds_nothing_on(engine)
        finally:
            await engine.dispose()

    async def test_an_autocommit_write_gives_its_turn_back_at_once(self, scratch_database: str) -> None:
        engine = create_engine(scratch_database)
        autocommit = engine.execution_options(isolation_level="AUTOCOMMIT")
        try:
            async with autocommit.connect() as conn:
                await conn.execute(update(Citizen).where(Citizen.id == "nobody").values(version=1))
                assert _holds_nothing_on(engine)
                await conn.execute(text("SELECT 1"))
        finally:
            await engine.dispose()


@pytest.fixture
def witnesses(tmp_path: Path, settings: Settings) -> Iterator[list[WitnessProcess]]:
    log_vkey = load_signer(settings, AuditSettings().origin).verifier_key()
    yield from running_witnesses(WITNESS_NAMES, tmp_path, log_vkey)


@dataclass
class Served:
    app: FastAPI
    client: httpx.AsyncClient
    settings: Settings
    registrar: dict[str, str]


@pytest.fixture
async def served(
    database_url: str, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Served]:
    """The app on a committed database with its workers (audit writer, sequencer), the
    test policies, and a registrar's token."""
    monkeypatch.setenv("TELLONCE_AUDIT_CHECKPOINT_INTERVAL_MS", "20")
    monkeypatch.setenv("TELLONCE_AUDIT_SEQUENCER_POLL_MS", "10")
    url = await create_scratch_database(database_url)
    settings = settings.model_copy(update={"database_url": url})
    database = Database(settings)
    try:
        async with database.sessions.begin() as session:
            await policy_service.apply_folder(
                session, load_policy_folder(TEST_POLICIES), author="tests", reason="write turns tests"
            )
            created = await auth_service.create_client(
                session, department="register", roles=["registrar", "writer"]
            )
        await database.dispose()
        assert created.client_secret is not None
        app = create_app(settings)
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as client,
        ):
            token = await client.post(
                "/oauth/token",
                data={"grant_type": "client_credentials"},
                auth=(created.client_id, created.client_secret),
            )
            assert token.status_code == 200, token.text
            yield Served(app, client, settings, {"Authorization": f"Bearer {token.json()['access_token']}"})
    finally:
        await drop_scratch_database(url)


class TestUnderLoad:
    async def test_witness_round_stores_cosignatures_while_a_field_write_holds_the_lock(
        self, served: Served, witnesses: list[WitnessProcess], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        engine = served.app.state.database.engine
        writer: AuditWriter = served.app.state.audit_writer
        await writer.append_many([make_entry() for _ in range(5)])

        async def signed() -> cosignature_repository.CheckpointRow | None:
            # The checkpoint of every entry: the sequencer signs no newer one until more
            # entries come, so the submitter below cosigns this one (on PostgreSQL nothing
            # holds the sequencer back while the test's write is open).
            async with engine.connect() as conn:
                newest = await cosignature_repository.newest_checkpoint(conn)
                entries = (await conn.execute(select(func.count()).select_from(AuditEntryRow))).scalar_one()
            return newest if newest is not None and newest.tree_size == entries else None

        checkpoint = await poll(signed)
        monkeypatch.setenv("TELLONCE_AUDIT_WITNESSES", " ".join(w.config for w in witnesses))
        # The engine the app gives its submitter: the sequencer's, with a 250 ms busy timeout.
        submitter_engine = _sequencer_engine(served.settings)
        submitter = WitnessSubmitter(submitter_engine, witness_config(AuditSettings()))
        try:
            async with engine.begin() as conn:
                await conn.execute(
                    update(Citizen).where(Citizen.id == "nobody").values(version=Citizen.version + 1)
                )
                witnessing = asyncio.create_task(submitter.run_once())
                await asyncio.wait({witnessing}, timeout=HOLD_SECONDS)
            assert await witnessing
        finally:
            await submitter.close()
            await submitter_engine.dispose()
        async with engine.connect() as conn:
            stored = await cosignature_repository.cosignatures_for(conn, checkpoint.id)
        assert set(stored) == set(WITNESS_NAMES)

    async def test_field_writes_answer_200_while_others_write(self, served: Served) -> None:
        registered = await served.client.post(
            "/v1/citizens",
            json={"national_id": "NI500001", "fields": {"given_name": "Ada", "address": "1 High St"}},
            headers=served.registrar,
        )
        assert registered.status_code == 201, registered.text
        citizen_id = registered.json()["id"]
        engine = served.app.state.database.engine
        writer: AuditWriter = served.app.state.audit_writer
        stop = asyncio.Event()

        async def audit_batches() -> int:
            # The read path's audit entries: a batch committed on the writer's own connection.
            batches = 0
            while not stop.is_set():
                await writer.append_many([make_entry() for _ in range(3)])
                batches += 1
            return batches

        async def field_write(n: int) -> httpx.Response:
            return await served.client.patch(
                f"/v1/citizens/{citizen_id}/fields",
                json={"fields": {"address": f"{n} Low Rd"}, "reason": "moved"},
                headers=served.registrar,
            )

        appending = asyncio.create_task(audit_batches())
        try:
            async with engine.begin() as conn:
                await conn.execute(
                    update(Citizen).where(Citizen.id == "nobody").values(version=Citizen.version + 1)
                )
                writes = asyncio.gather(*(field_write(n) for n in range(20)))
                await asyncio.wait({writes}, timeout=HOLD_SECONDS)
            answers = await writes
        finally:
            stop.set()
            assert await appending > 0
        refused = [a.text for a in answers if a.status_code != 200]
        assert [a.status_code for a in answers] == [200] * 20, refused


class TestReadThenWrite:
    async def test_a_field_write_stands_when_the_audit_commits_between_its_read_and_its_write(
        self, served: Served, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A field write reads the citizen inside its transaction before it writes. On SQLite
        that read must not fix a snapshot its write then cannot use (SQLITE_BUSY_SNAPSHOT at
        once, a 503): here the audit writer commits a batch on its own connection in between,
        and the write still answers 200."""
        registered = await served.client.post(
            "/v1/citizens",
            json={"national_id": "NI500002", "fields": {"given_name": "Ada", "address": "1 High St"}},
            headers=served.registrar,
        )
        assert registered.status_code == 201, registered.text
        writer: AuditWriter = served.app.state.audit_writer
        read_citizens = records_repository.get_citizens
        committed: list[int] = []

        async def read_then_audit_commits(conn: AsyncConnection, ids: Sequence[str]) -> Any:
            found = await read_citizens(conn, ids)
            committed.extend(await writer.append_many([make_entry()]))
            return found

        monkeypatch.setattr(records_repository, "get_citizens", read_then_audit_commits)
        written = await served.client.patch(
            f"/v1/citizens/{registered.json()['id']}/fields",
            json={"fields": {"address": "2 Low Rd"}, "reason": "moved"},
            headers=served.registrar,
        )
        assert written.status_code == 200, written.text
        assert written.json()["version"] == 2
        assert len(committed) == 1
