"""The batched writer: group commit, and fail closed when a commit fails."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from service.audit import writer as writer_module
from service.audit.errors import AuditUnavailable
from service.audit.models import AuditEntryRow
from service.audit.writer import APPEND_LOCK_KEY, AuditWriter
from service.db import create_engine
from service.errors import ServiceUnavailable
from service.schema import upgrade_async
from tests.fixtures.audit import make_entry


@pytest.fixture
async def writer(committed_engine: AsyncEngine) -> AsyncIterator[AuditWriter]:
    audit_writer = AuditWriter(committed_engine)
    await audit_writer.start()
    yield audit_writer
    await audit_writer.stop()


async def _count(engine: AsyncEngine, ids: list[int]) -> int:
    async with engine.connect() as conn:
        found = await conn.execute(select(func.count()).where(AuditEntryRow.id.in_(ids)))
        return int(found.scalar() or 0)


class TestGroupCommit:
    async def test_concurrent_appends_share_transactions(
        self, writer: AuditWriter, committed_engine: AsyncEngine
    ) -> None:
        entries = [make_entry(request_id=f"group-{i}") for i in range(300)]
        ids = await asyncio.gather(*(writer.append(entry) for entry in entries))
        assert len(set(ids)) == 300
        assert writer.entries_committed == 300
        assert writer.batches_committed < 300
        # Durable: a separate connection sees every one as soon as append returned.
        assert await _count(committed_engine, list(ids)) == 300

    async def test_each_entry_is_stored_with_its_own_id(
        self, writer: AuditWriter, committed_engine: AsyncEngine
    ) -> None:
        entries = [make_entry(request_id=f"own-{i}") for i in range(20)]
        ids = await asyncio.gather(*(writer.append(entry) for entry in entries))
        async with committed_engine.connect() as conn:
            rows = dict(
                (
                    await conn.execute(
                        select(AuditEntryRow.id, AuditEntryRow.canonical).where(AuditEntryRow.id.in_(ids))
                    )
                ).all()
            )
        for entry, entry_id in zip(entries, ids, strict=True):
            assert rows[entry_id] == entry.canonical()

    async def test_append_many_returns_ids_in_order(
        self, writer: AuditWriter, committed_engine: AsyncEngine
    ) -> None:
        entries = [make_entry(request_id=f"many-{i}") for i in range(50)]
        ids = await writer.append_many(entries)
        assert ids == sorted(ids)
        assert await _count(committed_engine, ids) == 50
        # Each id is its own entry's: the batch's ids are handed back in the rows' order.
        async with committed_engine.connect() as conn:
            query = select(AuditEntryRow.id, AuditEntryRow.canonical).where(AuditEntryRow.id.in_(ids))
            stored = dict((await conn.execute(query)).all())
        assert [stored[entry_id] for entry_id in ids] == [entry.canonical() for entry in entries]


async def _stored(engine: AsyncEngine, request_id_prefix: str) -> dict[int, str]:
    """Stored entries whose request id starts with the prefix: id -> canonical JSON."""
    async with engine.connect() as conn:
        query = select(AuditEntryRow.id, AuditEntryRow.canonical).where(
            AuditEntryRow.canonical.like(f'%"request_id":"{request_id_prefix}%')
        )
        return dict((await conn.execute(query)).all())


class TestFailClosed:
    async def test_failed_commit_fails_every_waiter(self, committed_engine: AsyncEngine) -> None:
        async def refuse(_conn: AsyncConnection) -> None:
            raise OSError("disk full")

        failing = AuditWriter(committed_engine, before_commit=refuse)
        await failing.start()
        try:
            results = await asyncio.gather(
                *(failing.append(make_entry(request_id=f"fail-{i}")) for i in range(50)),
                return_exceptions=True,
            )
        finally:
            await failing.stop()
        assert len(results) == 50
        assert all(isinstance(result, AuditUnavailable) for result in results)
        assert all(isinstance(result, ServiceUnavailable) for result in results)
        problem = results[0].problem()  # type: ignore[union-attr]
        assert problem["status"] == 503
        assert problem["type"].endswith("audit-unavailable")
        assert failing.entries_committed == 0
        async with committed_engine.connect() as conn:
            found = await conn.execute(
                select(func.count()).where(AuditEntryRow.canonical.like('%"request_id":"fail-%'))
            )
        assert found.scalar() == 0

    async def test_stopped_writer_refuses(self, engine: AsyncEngine) -> None:
        stopped = AuditWriter(engine)
        with pytest.raises(AuditUnavailable):
            await stopped.append(make_entry())

    async def test_writer_recovers_after_a_failed_batch(self, committed_engine: AsyncEngine) -> None:
        failures = [True]

        async def fail_once(_conn: AsyncConnection) -> None:
            if failures.pop() if failures else False:
                raise OSError("transient")

        flaky = AuditWriter(committed_engine, before_commit=fail_once)
        await flaky.start()
        try:
            with pytest.raises(AuditUnavailable):
                await flaky.append(make_entry())
            assert await flaky.append(make_entry()) > 0
        finally:
            await flaky.stop()


class TestFailedCommitOnTheFastPath:
    """Without a test hook a batch commits the fast way (SQLite: one call on the writer's
    thread; PostgreSQL: one autocommitted statement). A batch that fails there fails each
    of its waiters, and stores none of them."""

    async def test_each_append_is_stored_or_refused_when_the_connection_breaks(self, tmp_path: Path) -> None:
        url = f"sqlite+aiosqlite:///{tmp_path / 'audit.db'}"
        await upgrade_async(url)
        engine = create_engine(url)
        writer = AuditWriter(engine)
        await writer.start()
        try:
            await writer.append(make_entry(request_id="break-first"))
            batches = writer._sqlite
            assert batches is not None
            assert batches._connection is not None
            # The kept connection breaks under a batch: it fails whole, the next reconnects.
            batches._connection.close()
            entries = [make_entry(request_id=f"break-{i}-") for i in range(64)]
            results = await asyncio.gather(
                *(writer.append(entry) for entry in entries), return_exceptions=True
            )
            stored = await _stored(engine, "break-")
        finally:
            await writer.stop()
            await engine.dispose()
        refused = [
            entry for entry, result in zip(entries, results, strict=True) if isinstance(result, Exception)
        ]
        assert refused
        assert all(isinstance(result, (int, AuditUnavailable)) for result in results)
        for entry, result in zip(entries, results, strict=True):
            if isinstance(result, int):
                assert stored[result] == entry.canonical()
        stored_texts = set(stored.values())
        assert not any(entry.canonical() in stored_texts for entry in refused)

    async def test_postgres_batch_whose_connection_dies_at_the_lock_fails_every_waiter(
        self, writer: AuditWriter, committed_engine: AsyncEngine, on_postgres: bool
    ) -> None:
        if not on_postgres:
            pytest.skip(
                "needs PostgreSQL: the append lock is a PostgreSQL advisory lock; SQLite has one writer"
            )
        run = uuid.uuid4().hex
        async with committed_engine.connect() as holder:
            # Hold the append lock, so the writer's batch waits at it, then end its session.
            await holder.execute(text(f"SELECT pg_advisory_xact_lock({APPEND_LOCK_KEY})"))
            appends = [
                asyncio.ensure_future(writer.append(make_entry(request_id=f"killed-{run}-{i}-")))
                for i in range(40)
            ]
            deadline = time.monotonic() + 10
            waiting: list[int] = []
            while not waiting and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
                # A transaction sees one snapshot of the activity unless it is cleared.
                await holder.execute(text("SELECT pg_stat_clear_snapshot()"))
                found = await holder.execute(
                    text(
                        # (The query text a waiting backend shows may still be its last.)
                        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
                        "AND wait_event_type = 'Lock' AND wait_event = 'advisory'"
                    )
                )
                waiting = [int(pid) for pid in found.scalars()]
            assert len(waiting) == 1, "the batch should wait at the append lock"
            for pid in waiting:
                await holder.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
            results = await asyncio.gather(*appends, return_exceptions=True)
            await holder.rollback()
        assert all(isinstance(result, AuditUnavailable) for result in results)
        assert writer.entries_committed == 0
        assert await _stored(committed_engine, f"killed-{run}-") == {}
        # The pool drops the dead connections; the next batch commits.
        assert await writer.append(make_entry(request_id="after-killed")) > 0


class TestSqliteConnection:
    """The SQLite writer's kept connection, on a database file of its own (so this runs
    whichever database the suite is on)."""

    async def test_lost_connection_fails_its_batch_and_the_next_reconnects(self, tmp_path: Path) -> None:
        url = f"sqlite+aiosqlite:///{tmp_path / 'audit.db'}"
        await upgrade_async(url)
        engine = create_engine(url)
        writer = AuditWriter(engine)
        await writer.start()
        try:
            first = await writer.append(make_entry(request_id="kept-1"))
            batches = writer._sqlite
            assert batches is not None
            assert batches._connection is not None
            # As if the database went away under the kept connection.
            batches._connection.close()
            with pytest.raises(AuditUnavailable):
                await writer.append(make_entry(request_id="kept-lost"))
            second = await writer.append(make_entry(request_id="kept-2"))
            assert second > first
            assert await _count(engine, [first, second]) == 2
            async with engine.connect() as conn:
                lost = await conn.execute(
                    select(func.count()).where(AuditEntryRow.canonical.like('%"request_id":"kept-lost"%'))
                )
            assert lost.scalar() == 0
        finally:
            await writer.stop()
            await engine.dispose()


def _read_until(path: str, stop: threading.Event) -> None:
    """Short reads, one after another with a pause between, until ``stop`` is set."""
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        while not stop.is_set():
            connection.execute("SELECT max(id) FROM audit_entries").fetchall()
            time.sleep(0.0002)
    finally:
        connection.close()


class TestSqliteLockAndCheckpoints:
    """The SQLite writer waits for the write lock in short sleeps of its own (its
    connection's busy timeout is 0), fails closed once it has waited too long, and leaves
    WAL checkpoints to its checkpoint thread."""

    async def test_a_batch_waits_for_a_lock_held_elsewhere(self, sqlite_engine: AsyncEngine) -> None:
        path = sqlite_engine.url.database
        assert path is not None
        writer = AuditWriter(sqlite_engine)
        await writer.start()
        holder = sqlite3.connect(path, isolation_level=None)
        try:
            await writer.append(make_entry(request_id="lock-first"))
            holder.execute("BEGIN IMMEDIATE")
            pending = asyncio.ensure_future(writer.append(make_entry(request_id="lock-waited")))
            await asyncio.sleep(0.2)
            assert not pending.done(), "the batch should wait while the lock is held"
            holder.execute("COMMIT")
            assert await pending > 0
        finally:
            holder.close()
            await writer.stop()
        assert len(await _stored(sqlite_engine, "lock-waited")) == 1

    async def test_a_batch_that_cannot_get_the_lock_fails_closed(
        self, sqlite_engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(writer_module, "LOCK_WAIT_SECONDS", 0.2)
        path = sqlite_engine.url.database
        assert path is not None
        writer = AuditWriter(sqlite_engine)
        await writer.start()
        holder = sqlite3.connect(path, isolation_level=None)
        try:
            holder.execute("BEGIN IMMEDIATE")
            with pytest.raises(AuditUnavailable):
                await writer.append(make_entry(request_id="lock-refused"))
            holder.execute("COMMIT")
            # The lock is free again: the next batch commits.
            assert await writer.append(make_entry(request_id="lock-after")) > 0
        finally:
            holder.close()
            await writer.stop()
        assert await _stored(sqlite_engine, "lock-refused") == {}

    async def test_checkpoints_run_on_their_own_thread(
        self, sqlite_engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(writer_module, "CHECKPOINT_BATCHES", 3)
        writer = AuditWriter(sqlite_engine)
        await writer.start()
        try:
            for i in range(7):
                await writer.append(make_entry(request_id=f"checkpointed-{i}"))
            batches = writer._sqlite
            assert batches is not None
            assert batches._connection is not None
            assert batches._connection.execute("PRAGMA wal_autocheckpoint").fetchone()[0] == 0
        finally:
            await writer.stop()
        # Stopping waits for a checkpoint still running. One was due after the third batch,
        # and another after the sixth or seventh unless the first was still running.
        assert 1 <= batches.checkpoints <= 2
        assert len(await _stored(sqlite_engine, "checkpointed-")) == 7

    async def test_the_log_starts_over_under_continuous_batches(
        self, sqlite_engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Batch after batch, as at ``wrk -c1``, with reads on another connection: the
        checkpoint thread's PASSIVE checkpoints seldom reach the log's end before the next
        batch writes (a batch commits while each runs), and SQLite starts the log over only
        when a write begins with every frame copied. Without the writer's top-up the
        ``-wal`` file grew with the batches (to a gigabyte in a minute of ``wrk -c1``); with
        it the log starts over, and the file stays about ``WAL_RESTART_FRAMES`` long."""
        monkeypatch.setattr(writer_module, "CHECKPOINT_BATCHES", 16)
        monkeypatch.setattr(writer_module, "WAL_RESTART_FRAMES", 200)
        path = sqlite_engine.url.database
        assert path is not None
        writer = AuditWriter(sqlite_engine)
        await writer.start()
        reading = threading.Event()
        reader = threading.Thread(target=_read_until, args=(path, reading))
        reader.start()
        try:
            for i in range(1500):
                await writer.append(make_entry(request_id=f"continuous-{i}"))
            # Read while the writer's connection is open (the last connection to close
            # checkpoints the log and deletes its file).
            wal_bytes = Path(f"{path}-wal").stat().st_size
        finally:
            reading.set()
            reader.join()
            await writer.stop()
        # 1,500 batches wrote several thousand pages to the log (over 10 MB of 4 KiB pages).
        assert wal_bytes < 600 * 4096, wal_bytes
        assert len(await _stored(sqlite_engine, "continuous-")) == 1500
