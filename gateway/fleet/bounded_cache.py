"""A cache keyed by agent-supplied bytes, bounded by their size as well as by count.

The keys are what agents send (descriptions, statuses): an entry count alone would let one agent
grow the node by sending big ones. Full, the cache is cleared whole: it only saves work, and a
clear costs one recomputation per agent that speaks next."""

from __future__ import annotations

from typing import Generic, TypeVar

K = TypeVar("K")
V = TypeVar("V")

# What an entry costs beyond its key's bytes (dict slot, tuple, bytes headers).
ENTRY_OVERHEAD = 200


class BoundedCache(Generic[K, V]):
    __slots__ = ("bytes", "entries", "_max_bytes", "_max_entries")

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        # Read directly on the hot path (`entries[key]`, a KeyError on a miss); written through put.
        self.entries: dict[K, V] = {}
        self.bytes = 0
        self._max_entries = max_entries
        self._max_bytes = max_bytes

    def put(self, key: K, value: V, key_bytes: int) -> V:
        """Remember `value` under `key`, whose agent-supplied parts are `key_bytes` long."""
        cost = key_bytes + ENTRY_OVERHEAD
        if len(self.entries) >= self._max_entries or self.bytes + cost > self._max_bytes:
            self.entries.clear()
            self.bytes = 0
        self.entries[key] = value
        self.bytes += cost
        return value
