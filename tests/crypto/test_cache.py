"""The unwrapped-key cache: bounded, time-limited, and its clock injectable."""

from __future__ import annotations

import pytest

from service.crypto.cache import TTLCache
from tests.fixtures.crypto import clock_at


class TestTTLCache:
    def test_size_is_bounded_least_recently_used_first(self) -> None:
        _now, clock = clock_at()
        cache: TTLCache[int, str] = TTLCache(3, 60, clock)
        for key in (1, 2, 3):
            cache.put(key, f"v{key}")
        assert cache.get(1) == "v1"  # 1 is now the most recently used
        cache.put(4, "v4")
        assert len(cache) == 3
        assert 2 not in cache
        assert [cache.get(k) for k in (1, 3, 4)] == ["v1", "v3", "v4"]

    def test_entries_expire_after_the_ttl(self) -> None:
        now, clock = clock_at()
        cache: TTLCache[int, str] = TTLCache(10, 30, clock)
        cache.put(1, "v1")
        now[0] += 29.9
        assert cache.get(1) == "v1"
        now[0] += 0.1
        assert cache.get(1) is None
        assert 1 not in cache
        assert (cache.hits, cache.misses) == (1, 1)

    def test_a_hit_does_not_extend_the_ttl(self) -> None:
        now, clock = clock_at()
        cache: TTLCache[int, str] = TTLCache(10, 30, clock)
        cache.put(1, "v1")
        now[0] += 20
        assert cache.get(1) == "v1"
        now[0] += 10
        assert cache.get(1) is None

    def test_evict(self) -> None:
        _now, clock = clock_at()
        cache: TTLCache[int, str] = TTLCache(10, 30, clock)
        cache.put(1, "v1")
        cache.put(2, "v2")
        cache.evict([1, 99])
        assert 1 not in cache
        assert cache.get(2) == "v2"

    def test_refuses_a_zero_size_or_ttl(self) -> None:
        with pytest.raises(ValueError, match="positive"):
            TTLCache(0, 30)
        with pytest.raises(ValueError, match="positive"):
            TTLCache(10, 0)
