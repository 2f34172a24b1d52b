"""Concurrent requests share the epoch read, but each gets a read begun after it arrived."""

from __future__ import annotations

import asyncio
import random
import sqlite3
from collections.abc import Sequence
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


async def test_sqlite_reads_directly(tmp_path: Any) -> None:
    path = str(tmp_path / "epoch.db")
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE policy_epoch (id INTEGER PRIMARY KEY, epoch INTEGER, token TEXT)")
        db.execute("CREATE TABLE catalog_versions (version INTEGER)")
        db.execute("INSERT INTO policy_epoch VALUES (?, 7, 'abc')", (EPOCH_ROW,))
    reads = SqliteReads.open(path)
    try:
        shared = SharedEpochReads()
        assert await shared.key(reads) == (7, "abc", None)
        assert shared._reader is None  # no task: nothing could have joined the read
    finally:
        await reads.close()


@pytest.fixture(autouse=True)
def _seeded() -> None:
    random.seed(16)
