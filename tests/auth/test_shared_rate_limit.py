"""The client rate limit shared by replicas: one bucket per client in PostgreSQL, claimed by
one atomic upsert per batch of a replica's concurrent requests (``SharedRateLimiter``).

Two limiters with their own connection pools stand for two replicas here;
``tests/test_replicas.py`` counts 429s through HAProxy across three real servers.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from pydantic import ValidationError

from service.auth.ratelimit import RateLimiter, SharedRateLimiter
from service.auth.runtime import AuthRuntime
from service.config import Settings
from service.db import DriverReads, PostgresReads, open_driver_reads

# Slow enough that nothing refills while a test runs.
NO_REFILL = 0.001


class CountedReads:
    """A replica's raw-driver connections, counting the statements sent."""

    def __init__(self, reads: DriverReads) -> None:
        self.reads = reads
        self.statements = 0

    async def rows(self, sql: str, params: Sequence[Any] = ()) -> Sequence[Sequence[Any]]:
        self.statements += 1
        return await self.reads.rows(sql, params)

    async def close(self) -> None:
        await self.reads.close()


@pytest.fixture
async def replicas(
    on_postgres: bool, scratch_database: str
) -> AsyncIterator[tuple[CountedReads, CountedReads]]:
    if not on_postgres:
        pytest.skip(
            "needs PostgreSQL: the shared bucket is an upsert on PostgreSQL's clock; "
            "SQLite serves from one process and keeps its buckets in memory"
        )
    first = CountedReads(await open_driver_reads(scratch_database))
    second = CountedReads(await open_driver_reads(scratch_database))
    assert isinstance(first.reads, PostgresReads)
    try:
        yield first, second
    finally:
        await first.close()
        await second.close()


async def take_many(
    limiter: SharedRateLimiter, reads: DriverReads, count: int, **bucket: Any
) -> list[float | None]:
    return list(await asyncio.gather(*(limiter.take(reads, "tc_shared", **bucket) for _ in range(count))))


RATE = 5.0


@pytest.mark.postgres
class TestSharedRateLimiter:
    async def test_two_replicas_admit_the_burst_once_between_them(
        self, replicas: tuple[CountedReads, CountedReads]
    ) -> None:
        first, second = replicas
        one, other = SharedRateLimiter(NO_REFILL, 10), SharedRateLimiter(NO_REFILL, 10)
        answers = await asyncio.gather(take_many(one, first, 15), take_many(other, second, 15))
        waits = answers[0] + answers[1]
        assert waits.count(None) == 10
        refused = [wait for wait in waits if wait is not None]
        assert len(refused) == 20
        # The next token is 1 / rate seconds away, less what refilled meanwhile.
        assert all(900 < wait <= 1000 for wait in refused)

    async def test_concurrent_requests_of_a_client_share_one_claim(
        self, replicas: tuple[CountedReads, CountedReads]
    ) -> None:
        reads, _ = replicas
        limiter = SharedRateLimiter(NO_REFILL, 400)
        # The first request claims for itself; the other 49 arrive while it is in flight
        # and share the next claim: two statements for 50 requests.
        waits = await take_many(limiter, reads, 50)
        assert waits == [None] * 50
        assert reads.statements == 2
        # One at a time, each request is a claim of its own.
        for _ in range(3):
            assert await limiter.take(reads, "tc_shared") is None
        assert reads.statements == 5

    async def test_a_short_claim_refuses_locally_until_the_next_token(
        self, replicas: tuple[CountedReads, CountedReads]
    ) -> None:
        reads, _ = replicas
        limiter = SharedRateLimiter(NO_REFILL, 2)
        assert await take_many(limiter, reads, 2) == [None, None]
        first_refusal = await limiter.take(reads, "tc_shared")
        assert first_refusal is not None
        statements = reads.statements
        for _ in range(20):
            wait = await limiter.take(reads, "tc_shared")
            assert wait is not None
            assert 0 < wait <= first_refusal
        assert reads.statements == statements  # no database work for a client over its rate

    async def test_refills_at_the_rate_up_to_the_burst(
        self, replicas: tuple[CountedReads, CountedReads]
    ) -> None:
        """At 5 tokens a second the three takes that empty the bucket have 200 ms before the
        next token is due (at 50 a second a loaded machine took longer than the 20 ms, and the
        third take found a token)."""
        reads, _ = replicas
        limiter = SharedRateLimiter(NO_REFILL, 400)
        assert await take_many(limiter, reads, 2, rate=RATE, burst=2) == [None, None]
        refused = await limiter.take(reads, "tc_shared", rate=RATE, burst=2)
        assert refused is not None
        assert refused <= 1 / RATE
        deadline = time.monotonic() + 10
        while (wait := await limiter.take(reads, "tc_shared", rate=RATE, burst=2)) is not None:
            assert time.monotonic() < deadline, "the bucket never refilled"
            await asyncio.sleep(wait)
        # However long it rested (long enough for five tokens), the bucket holds at most its burst.
        await asyncio.sleep(5 / RATE)
        assert (await take_many(limiter, reads, 5, rate=RATE, burst=2)).count(None) == 2


class TestChoosingTheStore:
    def test_auto_shares_on_postgresql_and_keeps_memory_on_sqlite(self, tmp_path: Any) -> None:
        sqlite = Settings(env="test", data_dir=tmp_path, database_url=f"sqlite+aiosqlite:///{tmp_path}/t.db")
        postgres = sqlite.model_copy(update={"database_url": "postgresql+asyncpg://u@127.0.0.1/t"})
        assert isinstance(AuthRuntime.create(sqlite).limiter, RateLimiter)
        assert isinstance(AuthRuntime.create(postgres).limiter, SharedRateLimiter)
        in_memory = postgres.model_copy(update={"rate_limit_store": "memory"})
        assert isinstance(AuthRuntime.create(in_memory).limiter, RateLimiter)

    def test_a_shared_store_on_sqlite_is_refused(self, tmp_path: Any) -> None:
        with pytest.raises(ValidationError, match="TELLONCE_RATE_LIMIT_STORE=database needs PostgreSQL"):
            Settings(
                env="test",
                data_dir=tmp_path,
                database_url=f"sqlite+aiosqlite:///{tmp_path}/t.db",
                rate_limit_store="database",
            )
