"""service.db's raw-driver reads on SQLite."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from service.db import SqliteReads, create_engine, savepoint, sqlite_file
from service.sqlite_turns import turns_for

_TAKE_THE_WRITE_LOCK = (
    "import sqlite3, sys\n"
    "connection = sqlite3.connect(sys.argv[1], timeout=0, isolation_level=None)\n"
    "try:\n"
    "    connection.execute('BEGIN IMMEDIATE')\n"
    "except sqlite3.OperationalError as exc:\n"
    "    print(exc)\n"
    "else:\n"
    "    print('taken')\n"
)


def _other_process_takes_the_write_lock(path: Path) -> str:
    return subprocess.run(
        [sys.executable, "-c", _TAKE_THE_WRITE_LOCK, str(path)], capture_output=True, text=True, check=True
    ).stdout.strip()


class TestSqliteReads:
    async def test_opening_and_closing_them_keeps_this_process_locks(self, tmp_path: Path) -> None:
        """POSIX drops all of a process's locks on a file when it closes any descriptor of
        that file: reads opened, asked for their marker and closed must leave this process's
        write lock where it was, so another process still cannot write meanwhile."""
        path = tmp_path / "locks.db"
        writer = sqlite3.connect(path, isolation_level=None)
        try:
            writer.execute("PRAGMA journal_mode=WAL")
            writer.execute("CREATE TABLE t (x)")
            writer.execute("BEGIN IMMEDIATE")
            writer.execute("INSERT INTO t VALUES (1)")
            assert _other_process_takes_the_write_lock(path) == "database is locked"
            reads = SqliteReads.open(str(path))
            assert reads.commit_marker() is not None
            await reads.close()
            assert _other_process_takes_the_write_lock(path) == "database is locked"
            writer.execute("COMMIT")
            assert _other_process_takes_the_write_lock(path) == "taken"
        finally:
            writer.close()

    async def test_a_log_made_after_opening_is_no_replacement_but_its_loss_is(self, tmp_path: Path) -> None:
        """Opened on a database not yet in WAL mode (``serve`` started before ``db
        upgrade``), the log the migration makes is not a replaced file, or the service
        would never be ready; deleting that log afterwards is."""
        path = tmp_path / "late-wal.db"
        reads = SqliteReads.open(str(path))
        try:
            assert not Path(f"{path}-wal").exists()
            writer = sqlite3.connect(path, isolation_level=None)
            try:
                writer.execute("PRAGMA journal_mode=WAL")
                writer.execute("CREATE TABLE t (x)")
                assert Path(f"{path}-wal").exists()
                assert not reads.replaced()
                assert await reads.rows("SELECT count(*) FROM t") == [(0,)]
                assert not reads.replaced()
                Path(f"{path}-wal").unlink()
                assert reads.replaced()
            finally:
                writer.close()
        finally:
            await reads.close()


class Rollback(Exception):
    pass


async def _savepoint_then_rollback(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("SELECT count(*) FROM savepoint_probe"))
        async with savepoint(conn):
            await conn.execute(text("INSERT INTO savepoint_probe (x) VALUES (1)"))
        await conn.execute(text("INSERT INTO savepoint_probe (x) VALUES (2)"))
        raise Rollback()


class TestSavepoint:
    async def test_a_savepoint_opened_before_any_write_rolls_back_with_its_transaction(
        self, scratch_database: str
    ) -> None:
        """On SQLite, pysqlite sends no BEGIN in front of a SAVEPOINT, so a savepoint that
        came before the transaction's first write opened a transaction of its own and its
        RELEASE committed what it wrote, whatever the caller's transaction did after
        (``conn.begin_nested()`` alone fails this test there). On PostgreSQL it always held."""
        engine = create_engine(scratch_database)
        try:
            async with engine.begin() as conn:
                await conn.execute(text("CREATE TABLE savepoint_probe (x INTEGER)"))
            with pytest.raises(Rollback):
                await _savepoint_then_rollback(engine)
            async with engine.connect() as conn:
                kept = (await conn.execute(text("SELECT x FROM savepoint_probe"))).scalars().all()
            assert kept == []
            async with engine.begin() as conn:
                async with savepoint(conn):
                    await conn.execute(text("INSERT INTO savepoint_probe (x) VALUES (3)"))
            async with engine.connect() as conn:
                kept = (await conn.execute(text("SELECT x FROM savepoint_probe"))).scalars().all()
            assert kept == [3]
        finally:
            await engine.dispose()


async def _another_connection_commits(engine: AsyncEngine) -> bool:
    """Whether a connection outside ``engine``'s write turns commits a row into another
    table now. On SQLite it is a plain ``sqlite3`` connection, as the audit writer's is,
    that does not wait for the write lock (timeout 0)."""
    path = sqlite_file(engine)
    if path is None:
        async with engine.begin() as other:
            await other.execute(text("INSERT INTO unrelated_probe (x) VALUES (1)"))
        return True
    plain = sqlite3.connect(path, timeout=0, isolation_level=None)
    try:
        plain.execute("INSERT INTO unrelated_probe (x) VALUES (1)")
    except sqlite3.OperationalError as exc:
        refusal = str(exc)
    else:
        return True
    finally:
        plain.close()
    assert refusal == "database is locked"
    return False


class TestSavepointWrites:
    async def test_a_read_in_a_savepoint_leaves_its_write_standing_when_another_connection_writes(
        self, scratch_database: str
    ) -> None:
        """In WAL mode a deferred BEGIN's first read fixes its snapshot, and a write after
        another connection committed failed at once ("database is locked",
        SQLITE_BUSY_SNAPSHOT, no busy timeout: a request answered 503). A savepoint now
        begins a writing transaction (BEGIN IMMEDIATE, after the process's write turn), so
        the other connection waits for it instead and the read and the write both stand."""
        engine = create_engine(scratch_database)
        try:
            async with engine.begin() as conn:
                await conn.execute(text("CREATE TABLE savepoint_probe (x INTEGER)"))
                await conn.execute(text("CREATE TABLE unrelated_probe (x INTEGER)"))
            async with engine.begin() as conn:
                async with savepoint(conn):
                    path = sqlite_file(engine)
                    # The turn before the lock: no inversion with the process's other writers.
                    assert path is None or turns_for(path).taken
                    seen = (await conn.execute(text("SELECT count(*) FROM savepoint_probe"))).scalar_one()
                    committed_between = await _another_connection_commits(engine)
                    await conn.execute(text("INSERT INTO savepoint_probe (x) VALUES (:x)"), {"x": seen + 1})
            assert committed_between is (path is None)
            async with engine.connect() as conn:
                kept = (await conn.execute(text("SELECT x FROM savepoint_probe"))).scalars().all()
            assert kept == [1]
            assert path is None or not turns_for(path).taken
        finally:
            await engine.dispose()

    async def test_a_transaction_that_only_reads_takes_no_write_lock(self, scratch_database: str) -> None:
        """Reads are not serialised: another connection commits while one reads in a transaction."""
        engine = create_engine(scratch_database)
        try:
            async with engine.begin() as conn:
                await conn.execute(text("CREATE TABLE unrelated_probe (x INTEGER)"))
            async with engine.begin() as conn:
                await conn.execute(text("SELECT count(*) FROM unrelated_probe"))
                assert await _another_connection_commits(engine)
                path = sqlite_file(engine)
                assert path is None or not turns_for(path).taken
        finally:
            await engine.dispose()


class TestStatementErrors:
    async def test_an_error_names_the_statement_never_its_values(self, engine: AsyncEngine) -> None:
        """A failed statement's error is logged: its text must not carry the bound values (an
        officer's name, a reason, a legal basis), only the statement."""
        with pytest.raises(DBAPIError) as failed:
            async with engine.connect() as conn:
                await conn.execute(
                    text("SELECT CAST(:officer AS INTEGER) + no_such_column"), {"officer": "Zebedee Quux-7Q"}
                )
        assert "no_such_column" in str(failed.value)
        assert "Zebedee" not in str(failed.value)
        assert "Zebedee" not in repr(failed.value)
