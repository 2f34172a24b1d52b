"""A real ``tellonce worker`` on SQLite whose database file or write-ahead log is replaced
or deleted under it (SQLite only: the fault is of SQLite's own files).

SQLite cannot tell an open connection that its file was moved over or deleted: the worker
would go on sequencing and delivering into the old one, which no other process sees. A
server says so at ``/readyz``; a worker has no such probe, so it says so in its log once
and exits 1, for its supervisor to start it again on the file that is there now.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import server_env
from tests.fixtures.databases import SQLITE_PREFIX, is_postgres

pytestmark = pytest.mark.e2e

REPLACED = "was replaced or deleted while this process had it open"


def holds_open(pid: int, path: Path) -> bool:
    """Whether process ``pid`` has ``path`` open (its descriptors, as Linux lists them)."""
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(FileNotFoundError):
            if os.readlink(fd) == str(path):
                return True
    return False


@contextlib.contextmanager
def running_worker(url: str, folder: Path, root_key: str) -> Iterator[tuple[subprocess.Popen[bytes], Path]]:
    (folder / "data").mkdir()
    log = folder / "worker.log"
    with log.open("wb") as out:
        worker = subprocess.Popen(
            [sys.executable, "-m", "service.cli", "worker"],
            env={**os.environ, **server_env(url, folder / "data", root_key)},
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        yield worker, log
    finally:
        if worker.poll() is None:
            worker.terminate()
            worker.wait(timeout=15)


@pytest.mark.parametrize("replace", ["database restored over it", "write-ahead log deleted"])
def test_the_worker_says_so_once_and_exits_1(
    scratch_database: str, root_key: str, tmp_path: Path, replace: str
) -> None:
    if is_postgres(scratch_database):
        pytest.skip("SQLite only: the fault is of SQLite's own files")
    path = Path(scratch_database[len(SQLITE_PREFIX) :])
    wal = Path(f"{path}-wal")
    with running_worker(scratch_database, tmp_path, root_key) as (worker, log):
        deadline = time.monotonic() + 30
        while not (wal.exists() and holds_open(worker.pid, wal)):
            assert worker.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"the worker did not open the database:\n{log.read_text()}"
            time.sleep(0.1)
        if replace == "database restored over it":
            copy = path.with_name(f"{path.name}.copy")
            with contextlib.closing(sqlite3.connect(path)) as source:
                with contextlib.closing(sqlite3.connect(copy)) as target:
                    source.backup(target)
            copy.replace(path)
        else:
            wal.unlink()
        assert worker.wait(timeout=30) == 1, log.read_text()
    said = log.read_text()
    assert said.count(REPLACED) == 1, said
    assert "Traceback" not in said, said
