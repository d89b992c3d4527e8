"""The retention sweep (--forget-after) on its own: batches, the cutoff, and a store that fails."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import pytest

from gateway.fleet.agent import AgentWrite
from gateway.metrics import Metrics
from gateway.node.retention import MAX_SWEEP_INTERVAL, RetentionSweep, sweep_interval
from gateway.store.base import StoreUnavailable
from harness.records import agent, full
from tests.support.memory_store import MemoryStore

pytestmark = pytest.mark.anyio

NOW = 10_000.0


class _FailingStore(MemoryStore):
    async def forget_unseen(self, before: float, limit: int) -> int:
        raise StoreUnavailable("the store is down")


async def _stored(store: MemoryStore, writes: Sequence[AgentWrite]) -> MemoryStore:
    await store.write(writes)
    return store


def _forgotten(metrics: Metrics) -> float:
    value = metrics.registry.get_sample_value("opamp_gateway_agents_forgotten_total", {"reason": "retention"})
    return value or 0.0


async def test_a_sweep_deletes_in_batches_until_none_is_left() -> None:
    old = [agent(last_seen=NOW - 200 - n) for n in range(5)]
    recent = agent(last_seen=NOW - 50)
    store = await _stored(MemoryStore(), [full(s) for s in (*old, recent)])
    metrics = Metrics()
    sweep = RetentionSweep(store, metrics, forget_after=100.0, clock=lambda: NOW, batch=2)
    assert await sweep.run() == 5
    assert set(store.records) == {recent.instance_uid}
    assert _forgotten(metrics) == 5
    assert await sweep.run() == 0


async def test_a_failing_store_is_logged_and_retried_next_time(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics()
    sweep = RetentionSweep(_FailingStore(), metrics, forget_after=100.0, clock=lambda: NOW)
    with caplog.at_level(logging.WARNING, logger="gateway.node.retention"):
        assert await sweep.run() == 0
    assert "the store is down" in caplog.text
    assert _forgotten(metrics) == 0


async def test_off_means_no_timer() -> None:
    sweep = RetentionSweep(MemoryStore(), Metrics(), forget_after=0.0, clock=lambda: NOW)
    await sweep.start()
    assert sweep._timer._task is None
    await sweep.stop()


def test_the_interval_is_a_share_of_forget_after_capped() -> None:
    assert sweep_interval(1000.0) == 100.0
    assert sweep_interval(30 * 86400.0) == MAX_SWEEP_INTERVAL
