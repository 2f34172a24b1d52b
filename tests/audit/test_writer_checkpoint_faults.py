"""The audit writer's WAL checkpoints on a disk that fills up under them (SQLite only).

The full disk is a real one for SQLite: a child process lowers its own file-size limit
(``RLIMIT_FSIZE``) to the database file's size, so a checkpoint, which copies the log's
pages into that file and so grows it, fails with EFBIG ("disk I/O error"), as with a full
disk; Python ignores SIGXFSZ. A child, so that no file of the test run's own meets the
limit. Its log goes to a pipe, which the limit does not reach.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

CHILD = textwrap.dedent(
    """
    import logging, os, resource, sqlite3, sys
    from service.audit.writer import SqliteBatches

    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(levelname)s %(message)s")
    path = sys.argv[1]
    # Another connection keeps the log from being checkpointed when it closes; it writes
    # half a megabyte of rows, which the database file does not yet hold.
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("PRAGMA journal_mode=WAL")
    holder.execute("PRAGMA wal_autocheckpoint=0")
    holder.execute("CREATE TABLE kept (value BLOB)")
    holder.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    holder.executemany("INSERT INTO kept VALUES (?)", [(os.urandom(1000),) for _ in range(500)])
    batches = SqliteBatches(path)
    unlimited = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (os.path.getsize(path), unlimited[1]))
    print("failed:", [batches._run_checkpoint() for _ in range(3)], file=sys.stderr)
    resource.setrlimit(resource.RLIMIT_FSIZE, unlimited)
    print("after:", batches._run_checkpoint(), file=sys.stderr)
    print("rows:", sqlite3.connect(path).execute("SELECT count(*) FROM kept").fetchone()[0], file=sys.stderr)
    """
)


def test_a_run_of_failed_checkpoints_is_one_line_then_usable_again(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(tmp_path / "audit.db")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    log = done.stderr
    # The three checkpoints under the limit did not run; the one after did, and kept all.
    assert "failed: [None, None, None]" in log, log
    assert "after: None" not in log, log
    assert "rows: 500" in log, log
    assert "Traceback" not in log, log
    failures = [line for line in log.splitlines() if "WAL checkpoint failed" in line]
    assert len(failures) == 1, log
    # The error's class and SQLite's own words, nothing of the data.
    assert "database unavailable (OperationalError: " in failures[0], failures[0]
    assert "audit writer WAL checkpoints: the database is usable again, after 3 failures" in log, log
