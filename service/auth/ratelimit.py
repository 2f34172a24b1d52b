"""Per-client token buckets: in one process's memory, or shared by every replica in
PostgreSQL.

``RateLimiter`` keeps each process's buckets in memory: behind N replicas (or N uvicorn
workers) a client could reach N times its rate. It is the limiter on SQLite, where one
process serves. ``SharedRateLimiter`` keeps one bucket per client in the table
``rate_buckets``, which every replica on the database shares, so the limit holds for the
whole deployment. ``TELLONCE_RATE_LIMIT_STORE`` chooses (``auto``: shared on PostgreSQL).

The shared bucket is computed in SQL by one atomic upsert, on the database's clock (the
replicas' clocks never enter it). A lone request claims its own token. Requests of one
client that arrive while a claim for it is in flight join the next claim, which takes as
many tokens as they are; so under load a replica sends one statement per batch of a
client's concurrent requests, never one begun before a request arrived. The bucket can
only refill at its rate, so once a claim comes back short the replica refuses that client
locally until the next token is due, and a client far over its rate costs the database
nothing more.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from service.db import DriverReads


class ClientRateLimit(Protocol):
    async def take(
        self, reads: DriverReads, client_id: str, rate: float | None = None, burst: int | None = None
    ) -> float | None:
        """Spend one token: ``None`` if allowed, else the seconds until one is available."""
        ...


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    """The buckets of one process, in memory."""

    def __init__(
        self,
        default_rate: float,
        default_burst: int,
        clock: Callable[[], float] = time.monotonic,
        max_clients: int = 100_000,
    ) -> None:
        self.default_rate = default_rate
        self.default_burst = default_burst
        self.clock = clock
        self.max_clients = max_clients
        self._buckets: dict[str, _Bucket] = {}

    async def take(
        self,
        reads: DriverReads,  # noqa: ARG002 - buckets in memory need no database
        client_id: str,
        rate: float | None = None,
        burst: int | None = None,
    ) -> float | None:
        rate = rate if rate and rate > 0 else self.default_rate
        capacity = float(burst if burst and burst > 0 else self.default_burst)
        now = self.clock()
        bucket = self._buckets.get(client_id)
        if bucket is None:
            if len(self._buckets) >= self.max_clients:
                self._buckets.clear()  # a bound on memory; every bucket restarts full
            bucket = self._buckets[client_id] = _Bucket(capacity, now)
        bucket.tokens = min(capacity, bucket.tokens + (now - bucket.updated) * rate)
        bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return None
        return (1.0 - bucket.tokens) / rate


# The bucket as refilled since its last claim: $3 is the rate per second, $4 the burst.
# refilled_at is the database's clock (clock_timestamp, in seconds); a clock stepped back
# refills nothing rather than draining the bucket.
_REFILLED = (
    "least($4::float8, bucket.tokens + greatest(0, excluded.refilled_at - bucket.refilled_at) * $3::float8)"
)

# One atomic statement per claim of $2 tokens for client $1: a new bucket starts full. The
# row lock of the upsert orders concurrent claims from every replica. Only the constant
# above is interpolated; the values are bound parameters.
CLAIM_SQL = f"""
INSERT INTO rate_buckets AS bucket (client_id, tokens, refilled_at, granted)
VALUES (
    $1, $4::float8 - least($2::int, floor($4::float8)),
    extract(epoch FROM clock_timestamp())::float8, least($2::int, floor($4::float8))::int
)
ON CONFLICT (client_id) DO UPDATE SET
    granted = least($2::int, floor({_REFILLED}))::int,
    tokens = {_REFILLED} - least($2::int, floor({_REFILLED})),
    refilled_at = excluded.refilled_at
RETURNING granted, tokens
"""  # noqa: S608


@dataclass
class _Claim:
    """Requests of one client waiting for the same claim, and what they ask for."""

    rate: float
    capacity: int
    answer: asyncio.Future[tuple[int, float]]
    wanted: int = 0


@dataclass
class SharedRateLimiter:
    """Buckets in PostgreSQL, shared by every replica (see the module docstring). One per
    process (``AuthRuntime.limiter``)."""

    default_rate: float
    default_burst: int
    clock: Callable[[], float] = time.monotonic
    max_clients: int = 100_000
    _waiting: dict[str, _Claim] = field(default_factory=dict)
    # Clients with a claim in flight: the task serving queued claims, or None while a lone
    # request claims for itself.
    _claiming: dict[str, asyncio.Task[None] | None] = field(default_factory=dict)
    _refused_until: dict[str, float] = field(default_factory=dict)

    async def take(
        self, reads: DriverReads, client_id: str, rate: float | None = None, burst: int | None = None
    ) -> float | None:
        until = self._refused_until.get(client_id)
        if until is not None:
            left = until - self.clock()
            if left > 0:
                return left
            del self._refused_until[client_id]
        rate = rate if rate and rate > 0 else self.default_rate
        capacity = burst if burst and burst > 0 else self.default_burst
        if client_id not in self._claiming:
            return await self._claim_alone(reads, client_id, rate, capacity)
        claim = self._waiting.get(client_id)
        if claim is None:
            claim = self._waiting[client_id] = _Claim(
                rate, capacity, asyncio.get_running_loop().create_future()
            )
            # Marks a failure retrieved even if every waiter was cancelled meanwhile.
            claim.answer.add_done_callback(lambda done: done.cancelled() or done.exception())
        place = claim.wanted
        claim.wanted += 1
        granted, tokens = await asyncio.shield(claim.answer)
        if place < granted:
            return None
        # A short claim left less than one token (it would have granted it otherwise).
        return (1.0 - tokens) / claim.rate

    async def _claim_alone(
        self, reads: DriverReads, client_id: str, rate: float, capacity: int
    ) -> float | None:
        """No claim in flight for this client: this request claims its own token, on its own
        task (a task per claim costs about as much as the statement); requests that arrive
        meanwhile queue one claim, sent as soon as this one returns."""
        self._claiming[client_id] = None
        try:
            rows = await reads.rows(CLAIM_SQL, (client_id, 1, rate, capacity))
        finally:
            del self._claiming[client_id]
            if client_id in self._waiting:
                self._claiming[client_id] = asyncio.create_task(self._claim_queued(reads, client_id))
        granted, tokens = self._settle(client_id, 1, rate, rows)
        return None if granted else (1.0 - tokens) / rate

    async def _claim_queued(self, reads: DriverReads, client_id: str) -> None:
        try:
            while (claim := self._waiting.pop(client_id, None)) is not None:
                try:
                    rows = await reads.rows(CLAIM_SQL, (client_id, claim.wanted, claim.rate, claim.capacity))
                except Exception as exc:  # handed to every waiter, as their own claim would be
                    claim.answer.set_exception(exc)
                    continue
                claim.answer.set_result(self._settle(client_id, claim.wanted, claim.rate, rows))
        finally:
            del self._claiming[client_id]

    def _settle(
        self, client_id: str, wanted: int, rate: float, rows: Sequence[Sequence[Any]]
    ) -> tuple[int, float]:
        """(granted, tokens left) from a claim's row; a short claim starts a local refusal."""
        granted, tokens = int(rows[0][0]), float(rows[0][1])
        if granted < wanted:
            if len(self._refused_until) >= self.max_clients:
                self._refused_until.clear()  # a bound on memory; the database decides again
            self._refused_until[client_id] = self.clock() + (1.0 - tokens) / rate
        return granted, tokens


def retry_after_seconds(wait: float) -> int:
    return max(1, math.ceil(wait))
