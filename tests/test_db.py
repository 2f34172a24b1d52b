"""service.db's raw-driver reads on SQLite."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

from service.db import SqliteReads

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
