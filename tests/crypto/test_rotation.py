"""Rotation and re-encryption on a committed database, including interrupted runs."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from typer.testing import CliRunner

from service.config import get_settings
from service.crypto import service as key_service
from service.crypto.errors import KeyUnwrapError
from service.crypto.keyring import DATA_KEYS, KEKS, KeyEvent, Keyring
from service.crypto.models import KeyJob
from tests.conftest import REPO_ROOT, TEST_POLICIES, server_env
from tests.fixtures.crypto import FIELD_VALUES, add_citizens, make_keyring, read_all_values, write_value

CITIZENS = 23
BATCH = 5


class Interrupted(Exception):
    pass


def interrupt_after_first_batch(calls: list[tuple[int, int]]) -> key_service.Progress:
    def progress(done: int, total: int) -> None:
        calls.append((done, total))
        raise Interrupted()

    return progress


async def populate(engine: AsyncEngine, keyring: Keyring) -> dict[int, str]:
    """CITIZENS citizens, each with register values (two versions of one) and a DVLA value."""
    known: dict[int, str] = {}
    async with engine.begin() as conn:
        citizens = await add_citizens(conn, CITIZENS)
        for n, citizen in enumerate(citizens):
            for field, owner, text, version in (
                ("given_name", "register", f"Given{n}-{secrets.token_hex(4)}", 1),
                ("address", "register", f"{n} Old Street", 1),
                ("licence_number", "dvla", f"LIC{n:05d}", 1),
            ):
                row = await write_value(conn, keyring, citizen, field, owner, text, version=version)
                known[row] = text
        # A second version of one citizen's address: history is re-keyed too.
        for citizen in citizens[:3]:
            await conn.execute(
                update(FIELD_VALUES)
                .where(FIELD_VALUES.c.citizen_id == citizen, FIELD_VALUES.c.field == "address")
                .values(is_current=False)
            )
            text = f"New Street for {citizen[:6]}"
            row = await write_value(conn, keyring, citizen, "address", "register", text, version=2)
            known[row] = text
    return known


async def readable_by_a_fresh_process(engine: AsyncEngine, root: bytes) -> dict[int, str]:
    async with engine.connect() as conn:
        return await read_all_values(conn, make_keyring(root))


async def department_key_rows(engine: AsyncEngine, department: str) -> list[tuple[int, int, str, bool]]:
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                select(DATA_KEYS.c.id, DATA_KEYS.c.kek_version, DATA_KEYS.c.status, DATA_KEYS.c.wrapped_key)
                .where(DATA_KEYS.c.department == department)
                .order_by(DATA_KEYS.c.id)
            )
        ).all()
    return [(r.id, r.kek_version, r.status, r.wrapped_key is not None) for r in rows]


async def kek_rows(engine: AsyncEngine, department: str) -> list[tuple[int, str, bool]]:
    async with engine.connect() as conn:
        rows = (
            await conn.execute(
                select(KEKS.c.version, KEKS.c.status, KEKS.c.wrapped_key)
                .where(KEKS.c.department == department)
                .order_by(KEKS.c.version)
            )
        ).all()
    return [(r.version, r.status, r.wrapped_key is not None) for r in rows]


@pytest.fixture
def root() -> bytes:
    return secrets.token_bytes(32)


class TestRotate:
    async def test_rewraps_every_data_key_and_retires_the_old_version(
        self, scratch_engine: AsyncEngine, root: bytes
    ) -> None:
        keyring = make_keyring(root)
        known = await populate(scratch_engine, keyring)
        events: list[KeyEvent] = []

        async def record(_conn: AsyncConnection, event: KeyEvent) -> None:
            events.append(event)

        keyring.on_key_event = record
        calls: list[tuple[int, int]] = []
        result = await key_service.rotate_department(
            scratch_engine, keyring, "register", batch_size=BATCH, progress=lambda d, t: calls.append((d, t))
        )
        assert (result.version, result.resumed, result.rewrapped, result.retired_versions) == (
            2,
            False,
            CITIZENS,
            [1],
        )
        assert calls[-1] == (CITIZENS, CITIZENS)
        assert [d for d, _ in calls] == sorted(d for d, _ in calls)
        assert len(calls) == -(-CITIZENS // BATCH)
        assert await kek_rows(scratch_engine, "register") == [(1, "retired", False), (2, "active", True)]
        assert {v for _, v, _, _ in await department_key_rows(scratch_engine, "register")} == {2}
        # Another department is not touched.
        assert {v for _, v, _, _ in await department_key_rows(scratch_engine, "dvla")} == {1}
        assert [e.action for e in events] == [
            "kek.created",
            "kek.rotated",
            "kek.retired",
            "kek.rewrap_completed",
        ]
        assert events[-1].detail == {"version": 2, "rewrapped": CITIZENS, "retired_versions": [1]}
        assert await readable_by_a_fresh_process(scratch_engine, root) == known

    async def test_an_interrupted_rotation_stays_readable_and_resumes(
        self, scratch_engine: AsyncEngine, root: bytes
    ) -> None:
        keyring = make_keyring(root)
        known = await populate(scratch_engine, keyring)
        calls: list[tuple[int, int]] = []
        with pytest.raises(Interrupted):
            await key_service.rotate_department(
                scratch_engine,
                keyring,
                "register",
                batch_size=BATCH,
                progress=interrupt_after_first_batch(calls),
            )
        assert calls == [(BATCH, CITIZENS)]
        # Half-way: both versions are in use and every value still decrypts.
        assert await kek_rows(scratch_engine, "register") == [(1, "decrypt_only", True), (2, "active", True)]
        versions = [v for _, v, _, _ in await department_key_rows(scratch_engine, "register")]
        assert versions.count(2) == BATCH
        assert versions.count(1) == CITIZENS - BATCH
        assert await readable_by_a_fresh_process(scratch_engine, root) == known
        async with scratch_engine.connect() as conn:
            status = {s.department: s for s in await key_service.key_status(conn)}
        assert [(v.version, v.status, v.data_keys) for v in status["register"].versions] == [
            (1, "decrypt_only", CITIZENS - BATCH),
            (2, "active", BATCH),
        ]
        # A new citizen written meanwhile gets a key under the active version.
        async with scratch_engine.begin() as conn:
            (late,) = await add_citizens(conn, 1)
            known[await write_value(conn, keyring, late, "given_name", "register", "Latecomer")] = "Latecomer"
            assert (await keyring.data_key_for_write(conn, late, "register")).kek_version == 2

        # Run again (a new process): it resumes to v2, it does not start a v3.
        result = await key_service.rotate_department(
            scratch_engine, make_keyring(root), "register", batch_size=BATCH
        )
        assert (result.version, result.resumed, result.rewrapped, result.retired_versions) == (
            2,
            True,
            CITIZENS - BATCH,
            [1],
        )
        assert await kek_rows(scratch_engine, "register") == [(1, "retired", False), (2, "active", True)]
        assert await readable_by_a_fresh_process(scratch_engine, root) == known

        # A later rotation starts a new version again.
        again = await key_service.rotate_department(scratch_engine, make_keyring(root), "register")
        assert (again.version, again.resumed, again.rewrapped) == (3, False, CITIZENS + 1)
        assert await readable_by_a_fresh_process(scratch_engine, root) == known

    async def test_a_rotation_that_loses_the_race_for_the_new_version_joins_it(
        self, scratch_engine: AsyncEngine, root: bytes, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Two `keys rotate` at once: both saw v1 active with nothing behind; the other
        one makes v2 first. This one was a RuntimeError traceback; it now finishes the
        rotation to v2 (nothing left to rewrap) and makes no v3."""
        keyring = make_keyring(root)
        known = await populate(scratch_engine, keyring)
        create_kek = keyring.provider.create_kek

        async def create_kek_after_another_rotation(department: str, version: int) -> Any:
            monkeypatch.setattr(keyring.provider, "create_kek", create_kek)
            other = await key_service.rotate_department(scratch_engine, make_keyring(root), department)
            assert (other.version, other.resumed, other.retired_versions) == (2, False, [1])
            return await create_kek(department, version)

        monkeypatch.setattr(keyring.provider, "create_kek", create_kek_after_another_rotation)
        events: list[KeyEvent] = []

        async def record(_conn: AsyncConnection, event: KeyEvent) -> None:
            events.append(event)

        keyring.on_key_event = record
        result = await key_service.rotate_department(scratch_engine, keyring, "register", batch_size=BATCH)
        assert (result.version, result.resumed, result.rewrapped) == (2, True, 0)
        assert [e.action for e in events] == ["kek.rewrap_completed"]
        assert await kek_rows(scratch_engine, "register") == [(1, "retired", False), (2, "active", True)]
        assert {v for _, v, _, _ in await department_key_rows(scratch_engine, "register")} == {2}
        assert await readable_by_a_fresh_process(scratch_engine, root) == known

    async def test_another_root_key_writes_nothing(self, scratch_engine: AsyncEngine, root: bytes) -> None:
        """Run with the wrong root key, rotate made and committed a new active KEK wrapped
        under that key before failing to unwrap the old one: from then on no new citizen
        of the department could be given a data key and every later rotation, with the
        right key, failed too. Now both commands refuse before writing anything."""
        keyring = make_keyring(root)
        known = await populate(scratch_engine, keyring)

        async def key_state() -> tuple[object, ...]:
            async with scratch_engine.connect() as conn:
                jobs = (await conn.execute(select(KeyJob.id))).all()
            return (
                await kek_rows(scratch_engine, "register"),
                await department_key_rows(scratch_engine, "register"),
                jobs,
            )

        before = await key_state()
        stranger = make_keyring()
        with pytest.raises(KeyUnwrapError):
            await key_service.rotate_department(scratch_engine, stranger, "register")
        with pytest.raises(KeyUnwrapError):
            await key_service.reencrypt_department(scratch_engine, stranger, "register")
        assert await key_state() == before
        # The right key still writes a new citizen and rotates.
        async with scratch_engine.begin() as conn:
            (late,) = await add_citizens(conn, 1)
            known[await write_value(conn, keyring, late, "given_name", "register", "Latecomer")] = "Latecomer"
        result = await key_service.rotate_department(scratch_engine, make_keyring(root), "register")
        assert (result.version, result.resumed, result.rewrapped) == (2, False, CITIZENS + 1)
        assert await readable_by_a_fresh_process(scratch_engine, root) == known


class TestReencrypt:
    async def test_new_data_keys_for_every_citizen_and_old_ones_destroyed(
        self, scratch_engine: AsyncEngine, root: bytes
    ) -> None:
        keyring = make_keyring(root)
        known = await populate(scratch_engine, keyring)
        old_register = {i for i, _, _, _ in await department_key_rows(scratch_engine, "register")}
        dvla_before = await department_key_rows(scratch_engine, "dvla")
        async with scratch_engine.connect() as conn:
            ciphertexts_before = {
                row.id: row.ciphertext
                for row in await conn.execute(select(FIELD_VALUES.c.id, FIELD_VALUES.c.ciphertext))
            }

        events: list[KeyEvent] = []

        async def record(_conn: AsyncConnection, event: KeyEvent) -> None:
            events.append(event)

        keyring.on_key_event = record
        result = await key_service.reencrypt_department(scratch_engine, keyring, "register", batch_size=BATCH)
        assert (result.resumed, result.data_keys, result.values) == (False, CITIZENS, 2 * CITIZENS + 3)
        assert [(e.action, e.department, dict(e.detail)) for e in events] == [
            ("data_keys.reencrypted", "register", {"data_keys": CITIZENS, "values": 2 * CITIZENS + 3})
        ]

        rows = await department_key_rows(scratch_engine, "register")
        destroyed = {i for i, _, status, live in rows if status == "destroyed" and not live}
        active = {i for i, _, status, live in rows if status == "active" and live}
        assert destroyed == old_register
        assert len(active) == CITIZENS
        assert await department_key_rows(scratch_engine, "dvla") == dvla_before
        async with scratch_engine.connect() as conn:
            values = (
                await conn.execute(
                    select(
                        FIELD_VALUES.c.id,
                        FIELD_VALUES.c.owner,
                        FIELD_VALUES.c.data_key_id,
                        FIELD_VALUES.c.ciphertext,
                    )
                )
            ).all()
        for value in values:
            if value.owner == "register":
                assert value.data_key_id in active
                assert value.ciphertext != ciphertexts_before[value.id]
            else:
                assert value.ciphertext == ciphertexts_before[value.id]
        # The old keys are gone from this process's cache too; everything reads back.
        assert not old_register & set(keyring.data_key_cache._entries)
        assert await readable_by_a_fresh_process(scratch_engine, root) == known
        async with scratch_engine.connect() as conn:
            assert await read_all_values(conn, keyring) == known

    async def test_an_interrupted_reencryption_stays_readable_and_resumes(
        self, scratch_engine: AsyncEngine, root: bytes
    ) -> None:
        keyring = make_keyring(root)
        known = await populate(scratch_engine, keyring)
        calls: list[tuple[int, int]] = []
        with pytest.raises(Interrupted):
            await key_service.reencrypt_department(
                scratch_engine,
                keyring,
                "register",
                batch_size=BATCH,
                progress=interrupt_after_first_batch(calls),
            )
        assert calls == [(BATCH, CITIZENS)]
        statuses = [s for _, _, s, _ in await department_key_rows(scratch_engine, "register")]
        assert statuses.count("destroyed") == BATCH
        assert statuses.count("active") == CITIZENS
        assert await readable_by_a_fresh_process(scratch_engine, root) == known
        async with scratch_engine.connect() as conn:
            (register,) = [s for s in await key_service.key_status(conn) if s.department == "register"]
        assert register.reencryption_pending
        assert register.destroyed_data_keys == BATCH

        # A citizen first written after the run began already has a fresh key: kept as is.
        async with scratch_engine.begin() as conn:
            (late,) = await add_citizens(conn, 1)
            known[await write_value(conn, keyring, late, "given_name", "register", "Latecomer")] = "Latecomer"
            late_key = (await keyring.data_key_for_write(conn, late, "register")).id

        result = await key_service.reencrypt_department(
            scratch_engine, make_keyring(root), "register", batch_size=BATCH
        )
        assert (result.resumed, result.data_keys) == (True, CITIZENS - BATCH)
        rows = await department_key_rows(scratch_engine, "register")
        assert [s for _, _, s, _ in rows].count("destroyed") == CITIZENS
        assert late_key in {i for i, _, s, _ in rows if s == "active"}
        assert await readable_by_a_fresh_process(scratch_engine, root) == known
        async with scratch_engine.connect() as conn:
            jobs = (await conn.execute(select(KeyJob.finished_at))).scalars().all()
            (register,) = [s for s in await key_service.key_status(conn) if s.department == "register"]
        assert len(jobs) == 1
        assert jobs[0] is not None
        assert not register.reencryption_pending

    async def test_two_runs_at_once_share_the_work(self, scratch_database: str, root: bytes) -> None:
        """Two `keys reencrypt` at once (two engines, as two processes have). On SQLite the
        second read a batch the first then re-encrypted, and failed on the unique active
        key (IntegrityError traceback); now each batch is claimed before it is read."""
        from service.db import create_engine

        engines = [create_engine(scratch_database), create_engine(scratch_database)]
        try:
            known = await populate(engines[0], make_keyring(root))
            old = {i for i, _, _, _ in await department_key_rows(engines[0], "register")}
            results = await asyncio.gather(
                *(
                    key_service.reencrypt_department(engine, make_keyring(root), "register", batch_size=2)
                    for engine in engines
                )
            )
            # One began the job, the other joined it.
            assert sorted(result.resumed for result in results) == [False, True]
            assert sum(result.data_keys for result in results) == CITIZENS
            assert sum(result.values for result in results) == 2 * CITIZENS + 3
            rows = await department_key_rows(engines[0], "register")
            assert {i for i, _, s, live in rows if s == "destroyed" and not live} == old
            assert len([i for i, _, s, live in rows if s == "active" and live]) == CITIZENS
            assert len(rows) == 2 * CITIZENS
            assert await readable_by_a_fresh_process(engines[1], root) == known
        finally:
            for engine in engines:
                await engine.dispose()


@pytest.mark.postgres
class TestErasureDuringReencryption:
    async def test_an_erasure_waiting_on_a_batch_destroys_the_key_the_batch_made(
        self, scratch_engine: AsyncEngine, root: bytes, on_postgres: bool, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The erasure's first look finds the key the batch is replacing and waits for it;
        the batch then commits the citizen's new key, which the erasure must destroy too
        (it used to stay live: the citizen erased, the values still decryptable)."""
        if not on_postgres:
            pytest.skip("needs PostgreSQL: SQLite's one write lock makes the two take turns")
        keyring = make_keyring(root)
        async with scratch_engine.begin() as conn:
            (citizen,) = await add_citizens(conn, 1)
            await write_value(conn, keyring, citizen, "given_name", "register", "Erasable")
        held, release = asyncio.Event(), asyncio.Event()
        reencrypt_batch = key_service._reencrypt_batch

        async def held_open(conn: AsyncConnection, *args: Any) -> int:
            # The batch has set the old key aside and inserted the new one, uncommitted.
            moved = await reencrypt_batch(conn, *args)
            held.set()
            await release.wait()
            return moved

        monkeypatch.setattr(key_service, "_reencrypt_batch", held_open)

        async def erase() -> None:
            async with scratch_engine.begin() as conn:
                await make_keyring(root).shred_citizen(conn, citizen)

        reencrypting = asyncio.ensure_future(
            key_service.reencrypt_department(scratch_engine, keyring, "register")
        )
        erasing: asyncio.Future[None] | None = None
        try:
            await asyncio.wait_for(held.wait(), timeout=30)
            erasing = asyncio.ensure_future(erase())
            async with scratch_engine.connect() as watcher:
                waiting = 0
                deadline = time.monotonic() + 30
                while not waiting and time.monotonic() < deadline and not erasing.done():
                    await asyncio.sleep(0.01)
                    await watcher.execute(text("SELECT pg_stat_clear_snapshot()"))
                    waiting = (
                        await watcher.execute(
                            text(
                                "SELECT count(*) FROM pg_stat_activity "
                                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                            )
                        )
                    ).scalar_one()
                await watcher.rollback()
            assert waiting == 1, "the erasure should wait for the batch's lock on the old key"
        finally:
            release.set()
            await asyncio.gather(reencrypting, *([erasing] if erasing else []), return_exceptions=True)
        assert reencrypting.result().data_keys == 1
        assert erasing is not None
        assert erasing.result() is None
        async with scratch_engine.connect() as conn:
            keys = (
                await conn.execute(
                    select(DATA_KEYS.c.status, DATA_KEYS.c.wrapped_key).where(
                        DATA_KEYS.c.citizen_id == citizen
                    )
                )
            ).all()
        assert len(keys) == 2
        assert [row for row in keys if row.wrapped_key is not None] == []


class TestKeysCommand:
    def test_status_rotate_and_reencrypt(
        self,
        scratch_database: str,
        scratch_engine: AsyncEngine,
        root: bytes,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        import base64

        from service.cli import app

        keyring = make_keyring(root)
        known = asyncio.run(populate_in_fresh_loop(scratch_database, keyring))
        monkeypatch.setenv("TELLONCE_DATABASE_URL", scratch_database)
        monkeypatch.setenv("TELLONCE_ENV", "test")
        monkeypatch.setenv("TELLONCE_DATA_DIR", str(tmp_path))
        monkeypatch.setenv("TELLONCE_ROOT_KEY", base64.b64encode(root).decode())
        get_settings.cache_clear()
        try:
            runner = CliRunner()
            rotated = runner.invoke(app, ["keys", "rotate", "--department", "register", "--batch-size", "4"])
            assert rotated.exit_code == 0, rotated.output
            # The outcome alone on standard output; the progress bar goes to standard error.
            assert rotated.stdout == (
                f"register: rotated to KEK v2; {CITIZENS} data keys rewrapped; retired: v1\n"
            )
            reencrypted = runner.invoke(app, ["keys", "reencrypt", "--department", "dvla"])
            assert reencrypted.exit_code == 0, reencrypted.output
            assert (
                f"dvla: re-encrypted {CITIZENS} values under {CITIZENS} new data keys" in reencrypted.output
            )
            status = runner.invoke(app, ["keys", "status"], env={"COLUMNS": "200"})
            assert status.exit_code == 0, status.output
            lines = {
                line.split("│")[1].strip(): line for line in status.output.splitlines() if line.count("│") > 3
            }
            assert f"v1 retired (0), v2 active ({CITIZENS})" in lines["register"]
            assert f"v1 active ({CITIZENS})" in lines["dvla"]
            for command in ("rotate", "reencrypt"):
                unknown = runner.invoke(
                    app, ["keys", command, "--department", "dvlaa"], env={"COLUMNS": "200"}
                )
                assert unknown.exit_code == 2
                assert "unknown department 'dvlaa': no catalog has been applied" in unknown.stderr
                assert unknown.stdout == ""
            missing = runner.invoke(app, ["keys", "rotate"])
            assert missing.exit_code == 2
            assert "--department" in missing.output
        finally:
            get_settings.cache_clear()
        assert asyncio.run(read_in_fresh_loop(scratch_database, root)) == known

    @pytest.fixture
    def keys_env(
        self, scratch_database: str, root: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> Iterator[None]:
        """The command's settings: the scratch database and the root key its keys are under."""
        import base64

        monkeypatch.setenv("TELLONCE_DATABASE_URL", scratch_database)
        monkeypatch.setenv("TELLONCE_ENV", "test")
        monkeypatch.setenv("TELLONCE_DATA_DIR", str(tmp_path))
        monkeypatch.setenv("TELLONCE_ROOT_KEY", base64.b64encode(root).decode())
        get_settings.cache_clear()
        yield
        get_settings.cache_clear()

    @pytest.mark.parametrize("command", ["rotate", "reencrypt"])
    @pytest.mark.usefixtures("keys_env")
    def test_a_department_name_with_brackets_is_printed_as_given(self, command: str) -> None:
        """Not read as rich markup, whose unmatched closing tag was a MarkupError traceback."""
        from service.cli import app

        result = CliRunner().invoke(app, ["keys", command, "--department", "[/bold]"], env={"COLUMNS": "200"})
        assert result.exit_code == 2, result.output
        assert "unknown department '[/bold]': no catalog has been applied" in result.output

    @pytest.mark.parametrize("command", ["rotate", "reencrypt"])
    @pytest.mark.usefixtures("keys_env")
    def test_a_department_the_catalog_does_not_know_is_called_unknown(
        self, scratch_database: str, root: bytes, command: str
    ) -> None:
        """Not "has no keys yet", which reads as if it were a department: one line listing
        the catalog's departments (ids only), exit 2 as other unknown names; a department the
        catalog knows that has no keys yet is still that, exit 1. Nothing is written."""
        from service.cli import app

        asyncio.run(populate_in_fresh_loop(scratch_database, make_keyring(root)))
        runner = CliRunner()
        assert runner.invoke(app, ["policies", "apply", str(TEST_POLICIES)]).exit_code == 0
        unknown = runner.invoke(app, ["keys", command, "--department", "nope"], env={"COLUMNS": "200"})
        keyless = runner.invoke(app, ["keys", command, "--department", "revenue"], env={"COLUMNS": "200"})
        assert unknown.exit_code == 2, unknown.output
        assert unknown.stdout == ""
        line = unknown.stderr.splitlines()[-1]  # after the progress bar's
        assert line.startswith("unknown department 'nope' (departments: ")
        assert "audit-office, dvla, portal, register, revenue, welfare" in line
        assert "no keys" not in line
        assert keyless.exit_code == 1, keyless.output
        assert keyless.stderr.splitlines()[-1] == "department 'revenue' has no keys yet"
        assert asyncio.run(kek_departments_in_fresh_loop(scratch_database)) == ["dvla", "register"]

    def test_another_root_key_is_one_line_and_changes_nothing(
        self,
        scratch_database: str,
        root: bytes,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """A root key that does not open the department's KEK (the wrong one, or a
        tampered row) was a KeyUnwrapError traceback; now one line and exit 1 (and
        nothing written: TestRotate.test_another_root_key_writes_nothing). One line on a
        narrow terminal too, and in a log file (rich's 80 columns)."""
        import base64

        from service.cli import app
        from service.crypto import cli as crypto_cli

        monkeypatch.setattr(crypto_cli.errors, "width", 60)

        known = asyncio.run(populate_in_fresh_loop(scratch_database, make_keyring(root)))
        monkeypatch.setenv("TELLONCE_DATABASE_URL", scratch_database)
        monkeypatch.setenv("TELLONCE_ENV", "test")
        monkeypatch.setenv("TELLONCE_DATA_DIR", str(tmp_path))
        monkeypatch.setenv("TELLONCE_ROOT_KEY", base64.b64encode(secrets.token_bytes(32)).decode())
        get_settings.cache_clear()
        try:
            for command in ("rotate", "reencrypt"):
                result = CliRunner().invoke(
                    app, ["keys", command, "--department", "register"], env={"COLUMNS": "200"}
                )
                assert isinstance(result.exception, SystemExit), result.exception
                assert result.exit_code == 1
                assert result.stdout == ""
                refusal = [line for line in result.stderr.splitlines() if "register" not in line]
                assert refusal == [
                    "a wrapped key did not unwrap under the root key: is this the root key "
                    "(or PKCS#11 token) this database's keys were made under?"
                ]
        finally:
            get_settings.cache_clear()
        assert asyncio.run(read_in_fresh_loop(scratch_database, root)) == known


async def populate_in_fresh_loop(url: str, keyring: Keyring) -> dict[int, str]:
    from service.db import create_engine

    engine = create_engine(url)
    try:
        return await populate(engine, keyring)
    finally:
        await engine.dispose()


async def kek_departments_in_fresh_loop(url: str) -> list[str]:
    from service.db import create_engine

    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            return list(
                (await conn.execute(select(KEKS.c.department).distinct().order_by("department"))).scalars()
            )
    finally:
        await engine.dispose()


async def read_in_fresh_loop(url: str, root: bytes) -> dict[int, str]:
    from service.db import create_engine

    engine = create_engine(url)
    try:
        return await readable_by_a_fresh_process(engine, root)
    finally:
        await engine.dispose()


class TestKilledRotation:
    def test_a_rotation_killed_mid_way_has_already_audited_its_new_kek(
        self, scratch_database: str, root: bytes, tmp_path: Path
    ) -> None:
        """`keys rotate` killed (SIGKILL) while it rewraps: the KEK it made and committed is
        in the audit trail under the operator, because its entries were appended in the
        transaction that made it (they used to be kept in memory until the command ended,
        and a killed command left the new KEK unaudited). Run again, it finishes and says so."""
        import base64

        asyncio.run(_data_keys_in_fresh_loop(scratch_database, make_keyring(root), KILLED_ROTATION_KEYS))
        env = {
            **os.environ,
            **server_env(scratch_database, tmp_path, base64.b64encode(root).decode()),
        }
        command = [sys.executable, "-m", "service.cli", "--actor", "dave", "keys", "rotate"]
        command += ["--department", "register", "--batch-size", "1"]
        process = subprocess.Popen(
            command, env=env, cwd=REPO_ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            deadline = time.monotonic() + 60
            while not asyncio.run(_rewrapped_some(scratch_database)):
                assert process.poll() is None, "the rotation ended before it could be killed"
                assert time.monotonic() < deadline
                time.sleep(0.005)
            process.send_signal(signal.SIGKILL)
        finally:
            process.wait(timeout=30)
        assert process.returncode == -signal.SIGKILL
        behind = {version for _, version, _, _ in asyncio.run(_key_rows_in_fresh_loop(scratch_database))}
        assert behind == {1, 2}, "killed after the rotation had finished: the test proved nothing"

        made = asyncio.run(_key_operations(scratch_database))
        assert made == [
            ("operator:dave", "kek.created: provider=local, version=2"),
            ("operator:dave", "kek.rotated: previous_version=1, version=2"),
        ]

        finished = subprocess.run(
            command, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120
        )
        assert finished.returncode == 0, finished.stderr
        assert finished.stdout.startswith("register: resumed rotation to KEK v2;")
        after = asyncio.run(_key_operations(scratch_database))
        assert after[:2] == made
        assert after[2] == ("operator:dave", "kek.retired: version=1")
        assert after[3][0] == "operator:dave"
        assert after[3][1].startswith("kek.rewrap_completed: retired_versions=[1], rewrapped=")
        assert after[3][1].endswith(", version=2")
        assert len(after) == 4

    def test_an_audit_that_cannot_be_written_leaves_no_new_kek(
        self,
        scratch_database: str,
        root: bytes,
        tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """The KEK's entry is written in the transaction that makes it: when it cannot be,
        the KEK is rolled back with it, and the command says so in one line, exit 1."""
        import base64

        from service.audit import key_events
        from service.audit.errors import AuditUnavailable
        from service.cli import run

        asyncio.run(_data_keys_in_fresh_loop(scratch_database, make_keyring(root), 3))

        async def audit_down(*_args: Any) -> int:
            raise AuditUnavailable("The audit entry could not be written; nothing was changed.")

        monkeypatch.setattr(key_events, "append_in_transaction", audit_down)
        for name, value in server_env(scratch_database, tmp_path, base64.b64encode(root).decode()).items():
            monkeypatch.setenv(name, value)
        monkeypatch.setattr(sys, "argv", ["tellonce", "keys", "rotate", "--department", "register"])
        get_settings.cache_clear()
        try:
            with pytest.raises(SystemExit) as exited:
                run()
        finally:
            get_settings.cache_clear()
        assert exited.value.code == 1
        assert capsys.readouterr().err.splitlines()[-1] == (
            "tellonce: The audit entry could not be written; nothing was changed."
        )
        engine_rows = asyncio.run(_kek_rows_in_fresh_loop(scratch_database))
        assert engine_rows == [(1, "active", True)]


KILLED_ROTATION_KEYS = 2000


async def _data_keys_in_fresh_loop(url: str, keyring: Keyring, count: int) -> None:
    """``count`` citizens with a register data key each (under KEK v1)."""
    from service.db import create_engine

    engine = create_engine(url)
    try:
        async with engine.begin() as conn:
            for citizen in await add_citizens(conn, count):
                await keyring.data_key_for_write(conn, citizen, "register")
    finally:
        await engine.dispose()


async def _key_rows_in_fresh_loop(url: str) -> list[tuple[int, int, str, bool]]:
    from service.db import create_engine

    engine = create_engine(url)
    try:
        return await department_key_rows(engine, "register")
    finally:
        await engine.dispose()


async def _kek_rows_in_fresh_loop(url: str) -> list[tuple[int, str, bool]]:
    from service.db import create_engine

    engine = create_engine(url)
    try:
        return await kek_rows(engine, "register")
    finally:
        await engine.dispose()


async def _rewrapped_some(url: str) -> bool:
    """A data key already under KEK v2: the rotation's first transaction has committed."""
    from service.db import create_engine

    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            found = await conn.execute(select(DATA_KEYS.c.id).where(DATA_KEYS.c.kek_version == 2).limit(1))
            return found.first() is not None
    finally:
        await engine.dispose()


async def _key_operations(url: str) -> list[tuple[str, str]]:
    """Every key operation in the trail: (actor, what)."""
    from service.audit.models import AuditEntryRow
    from service.db import create_engine

    engine = create_engine(url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                select(AuditEntryRow.canonical)
                .where(AuditEntryRow.action == "key-operation")
                .order_by(AuditEntryRow.id)
            )
            records = [json.loads(row[0]) for row in rows]
    finally:
        await engine.dispose()
    return [(record["client_id"], record["reasons"][0]["reason"]) for record in records]
