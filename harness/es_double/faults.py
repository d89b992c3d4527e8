"""Fault injection and request counting: what tests and the benchmark ask the double to do and tell."""

from __future__ import annotations

import threading
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class Faults:
    """What to break. Counters count down per request (or per bulk item) and stop at 0."""

    # Whole requests refused with this status (429 es_rejected_execution_exception, 503 ...).
    reject_requests: int = 0
    reject_status: int = 429
    # Only requests to these endpoints are refused (empty: any).
    reject_endpoints: frozenset[str] = frozenset()
    # Bulk items refused with 429 while the rest of the request succeeds.
    reject_bulk_items: int = 0
    # Every request waits this long first.
    latency: float = 0.0
    # A bulk request waits this long between its write-block check and applying its items.
    bulk_delay: float = 0.0

    def take_request(self, endpoint: str) -> bool:
        if self.reject_requests and (not self.reject_endpoints or endpoint in self.reject_endpoints):
            self.reject_requests -= 1
            return True
        return False

    def take_item(self) -> bool:
        if self.reject_bulk_items:
            self.reject_bulk_items -= 1
            return True
        return False


@dataclass
class Stats:
    """Requests served, by endpoint; a request is counted once it is answered, with its bulk sizes,
    in one step, so a snapshot taken from another thread never sees a bulk counted without its size."""

    requests: Counter[str] = field(default_factory=Counter)
    bulk_sizes: list[int] = field(default_factory=list)
    bulk_bytes: list[int] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record(self, endpoint: str, bulk: tuple[int, int] | None = None) -> None:
        with self._lock:
            self.requests[endpoint] += 1
            if bulk is not None:
                self.bulk_sizes.append(bulk[0])
                self.bulk_bytes.append(bulk[1])

    def snapshot(self) -> tuple[dict[str, int], int]:
        """(requests by endpoint, number of bulk requests with sizes), consistent with each other."""
        with self._lock:
            return dict(self.requests), len(self.bulk_sizes)

    @property
    def total(self) -> int:
        return sum(self.requests.values())
