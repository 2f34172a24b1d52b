"""Per-client token buckets, in the memory of one process.

Each process keeps its own buckets. Behind N replicas (or N uvicorn workers) a client
can therefore reach up to N times its configured rate in the worst case, when a load
balancer spreads its requests evenly; a shared store (Redis, or a PostgreSQL
counter) would be needed for an exact global limit.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
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

    def take(self, client_id: str, rate: float | None = None, burst: int | None = None) -> float | None:
        """Spend one token: ``None`` if allowed, else the seconds until one is available."""
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


def retry_after_seconds(wait: float) -> int:
    return max(1, math.ceil(wait))
