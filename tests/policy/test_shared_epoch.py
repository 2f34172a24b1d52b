"""Concurrent requests share the epoch read, but each gets a read begun after it arrived;
on SQLite the key is read again on the very next request after any commit, and only then."""

from __future__ import annotations

import asyncio
import random
import sqlite3
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from service.db import SqliteReads
from service.policy.epoch import EPOCH_ROW, SharedEpochReads


class CountingReads:
    """A round-trip read that answers with the number of the read (1, 2, ...)."""

    def __init__(self, fail_on: set[int] | None = None) -> None:
        self.started = 0
        self.fail_on = fail_on or set()

    async def rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        self.started += 1
        number = self.started
        await asyncio.sleep(random.uniform(0, 0.003))
        if number in self.fail_on:
            raise ConnectionError(f"read {number} lost its connection")
        return [(number, "token", 1)]

    async def close(self) -> None:
        return None


async def test_each_request_gets_a_read_begun_after_it_arrived() -> None:
    shared = SharedEpochReads()
    reads = CountingReads()

    async def request() -> tuple[int, int]:
        await asyncio.sleep(random.uniform(0, 0.02))
        begun_before_arrival = reads.started
        epoch, _token, _catalog = await shared.key(reads)
        return begun_before_arrival, epoch

    answers = await asyncio.gather(*(request() for _ in range(300)))
    # The read that answered began after the request arrived: it saw what was committed.
    assert all(serving > begun for begun, serving in answers)
    # And requests arriving together shared reads.
    assert reads.started < len(answers)


async def test_a_failed_read_fails_its_waiters_and_the_next_read_is_fresh() -> None:
    shared = SharedEpochReads()
    reads = CountingReads(fail_on={1})
    first = [asyncio.create_task(shared.key(reads)) for _ in range(5)]
    await asyncio.sleep(0)  # the first read is in flight; these wait for the second
    second = [asyncio.create_task(shared.key(reads)) for _ in range(5)]
    results = await asyncio.gather(*first, *second, return_exceptions=True)
    assert all(isinstance(r, ConnectionError) for r in results[:5])
    assert results[5:] == [(2, "token", 1)] * 5
    assert (await shared.key(reads))[0] == 3


async def test_a_cancelled_waiter_does_not_cancel_the_others() -> None:
    shared = SharedEpochReads()
    reads = CountingReads()
    waiters = [asyncio.create_task(shared.key(reads)) for _ in range(3)]
    await asyncio.sleep(0)
    waiters[0].cancel()
    results = await asyncio.gather(*waiters, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)
    assert results[1] == results[2] == (1, "token", 1)


def _epoch_database(path: str, *, wal: bool) -> None:
    with sqlite3.connect(path) as db:
        if wal:
            db.execute("PRAGMA journal_mode=WAL")
        db.execute("CREATE TABLE policy_epoch (id INTEGER PRIMARY KEY, epoch INTEGER, token TEXT)")
        db.execute("CREATE TABLE catalog_versions (version INTEGER)")
        db.execute("CREATE TABLE other (x INTEGER)")
        db.execute("INSERT INTO policy_epoch VALUES (?, 7, 'abc')", (EPOCH_ROW,))


class CountedSqliteReads(SqliteReads):
    """``SqliteReads`` counting its statements."""

    statements = 0

    async def rows(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        self.statements += 1
        return await super().rows(sql, params)


def _counted(path: str) -> CountedSqliteReads:
    opened = SqliteReads.open(path)
    return CountedSqliteReads(opened.connection, opened.marks)


def _commit_in_another_process(path: str, sql: str) -> None:
    """``sql`` committed by a process of its own, which has exited when this returns."""
    script = "import sqlite3, sys; sqlite3.connect(sys.argv[1], isolation_level=None).execute(sys.argv[2])"
    subprocess.run([sys.executable, "-c", script, path, sql], check=True)


class TestOnSqlite:
    async def test_reads_directly(self, tmp_path: Path) -> None:
        path = str(tmp_path / "epoch.db")
        _epoch_database(path, wal=False)
        reads = _counted(path)
        try:
            shared = SharedEpochReads()
            assert await shared.key(reads) == (7, "abc", None)
            assert shared._reader is None  # no task: nothing could have joined the read
            # Not in WAL mode, the marker still moves with another process's commit.
            assert await shared.key(reads) == (7, "abc", None)
            assert reads.statements == 1
            _commit_in_another_process(path, "UPDATE policy_epoch SET epoch = 8")
            assert await shared.key(reads) == (8, "abc", None)
            assert reads.statements == 2
        finally:
            await reads.close()

    async def test_key_is_read_again_only_after_a_commit_and_on_the_very_next_request(
        self, tmp_path: Path
    ) -> None:
        path = str(tmp_path / "epoch.db")
        _epoch_database(path, wal=True)
        reads = _counted(path)
        try:
            shared = SharedEpochReads()
            assert await shared.key(reads) == (7, "abc", None)
            # Nothing committed since: the key read is still the answer.
            assert await shared.key(reads) == (7, "abc", None)
            assert reads.statements == 1

            # Another process moves the epoch (as `tellonce clients disable` does): the
            # very next request reads it.
            _commit_in_another_process(path, "UPDATE policy_epoch SET epoch = 8")
            assert await shared.key(reads) == (8, "abc", None)
            assert reads.statements == 2

            # Any commit moves the marker (an audit batch, say): read again, same key.
            _commit_in_another_process(path, "INSERT INTO other VALUES (1)")
            assert await shared.key(reads) == (8, "abc", None)
            assert await shared.key(reads) == (8, "abc", None)
            assert reads.statements == 3
        finally:
            await reads.close()

    async def test_commit_marker_moves_with_commits_only(self, tmp_path: Path) -> None:
        path = str(tmp_path / "epoch.db")
        _epoch_database(path, wal=True)
        reads = SqliteReads.open(path)
        writer = sqlite3.connect(path, isolation_level=None)
        try:
            before = reads.commit_marker()
            assert before is not None
            await reads.rows("SELECT * FROM other")
            writer.execute("BEGIN IMMEDIATE")
            writer.execute("INSERT INTO other VALUES (1)")
            writer.execute("ROLLBACK")
            writer.execute("PRAGMA wal_checkpoint(PASSIVE)")
            # A read, a rolled-back write and a checkpoint commit nothing.
            assert reads.commit_marker() == before
            writer.execute("INSERT INTO other VALUES (2)")
            assert reads.commit_marker() != before
        finally:
            writer.close()
            await reads.close()

    async def test_no_marker_in_memory(self) -> None:
        reads = SqliteReads.open(":memory:")
        try:
            assert reads.commit_marker() is None
        finally:
            await reads.close()


@pytest.fixture(autouse=True)
def _seeded() -> None:
    random.seed(16)
