"""Forgetting agents not seen for `--forget-after` seconds: one sweep per node.

Every node runs the sweep (there is no leader to elect): each run asks the store to delete records
whose `last_seen` is older than the cutoff, in batches of MAX_FORGET_BATCH until a batch comes back
short. The delete is idempotent (SQLite: one `DELETE ... WHERE last_seen < ?` per batch;
Elasticsearch: `_delete_by_query` with `conflicts=proceed`), so nodes sweeping at once each delete a
share and count only what they deleted, and an agent seen again since the cutoff keeps its record.
An agent that comes back after it was forgotten enrolls again, as a new one.

Connected agents are never forgotten: their stored `last_seen` stays within about 0.6 x
--offline-after (liveness.py), and --forget-after must be more than --offline-after.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from gateway.metrics import Metrics
from gateway.periodic import Periodic
from gateway.store.base import MAX_FORGET_BATCH, Store, StoreError

logger = logging.getLogger("gateway.node.retention")

# Seconds between sweeps at most, and the share of --forget-after below that.
MAX_SWEEP_INTERVAL = 3600.0
SWEEP_SHARE = 0.1


def sweep_interval(forget_after: float) -> float:
    return min(MAX_SWEEP_INTERVAL, forget_after * SWEEP_SHARE)


class RetentionSweep:
    def __init__(
        self,
        store: Store,
        metrics: Metrics,
        *,
        forget_after: float,
        clock: Callable[[], float],
        batch: int = MAX_FORGET_BATCH,
    ) -> None:
        self._store = store
        self._metrics = metrics
        self._forget_after = forget_after
        self._clock = clock
        self._batch = batch
        self._timer = Periodic("retention-sweep", sweep_interval(forget_after) or 1.0, self._on_timer)

    async def start(self) -> None:
        if self._forget_after > 0:
            self._timer.start()

    async def stop(self) -> None:
        await self._timer.stop()

    async def _on_timer(self) -> None:
        await self.run()

    async def run(self) -> int:
        """Delete the records not seen for --forget-after; how many this node deleted."""
        before = self._clock() - self._forget_after
        total = 0
        while True:
            try:
                deleted = await self._store.forget_unseen(before, self._batch)
            except StoreError as exc:
                logger.warning("retention sweep: agents not seen since the cutoff stay for now: %s", exc)
                break
            total += deleted
            self._metrics.agents_forgotten.labels(reason="retention").inc(deleted)
            if deleted < self._batch:
                break
        if total:
            logger.info("retention sweep: forgot %d agents not seen for %g s", total, self._forget_after)
        return total
