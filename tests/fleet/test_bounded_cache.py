from __future__ import annotations

from gateway.fleet.bounded_cache import ENTRY_OVERHEAD, BoundedCache


def test_it_is_cleared_whole_when_the_next_entry_would_pass_its_bytes() -> None:
    cache: BoundedCache[bytes, int] = BoundedCache(max_entries=100, max_bytes=3 * (100 + ENTRY_OVERHEAD))
    for i in range(3):
        assert cache.put(bytes([i]) * 100, i, 100) == i
    assert len(cache.entries) == 3 and cache.bytes == 3 * (100 + ENTRY_OVERHEAD)
    cache.put(b"x", 9, 1)
    assert cache.entries == {b"x": 9} and cache.bytes == 1 + ENTRY_OVERHEAD


def test_it_is_cleared_whole_at_its_entry_count() -> None:
    cache: BoundedCache[int, int] = BoundedCache(max_entries=2, max_bytes=1 << 20)
    cache.put(1, 1, 0)
    cache.put(2, 2, 0)
    cache.put(3, 3, 0)
    assert cache.entries == {3: 3}


def test_a_big_key_never_makes_it_hold_more_than_its_bytes() -> None:
    budget = 10_000
    cache: BoundedCache[int, int] = BoundedCache(max_entries=1 << 16, max_bytes=budget)
    for i in range(100):
        cache.put(i, i, 4_000)
        assert cache.bytes <= budget
