"""The store contract for rollout records: compare-and-set, survival across nodes, deletion with the
config. Every adapter runs it (see test_contract)."""

from __future__ import annotations

import asyncio

import pytest

from gateway.fleet.rollout_record import Rollout
from gateway.fleet.waves import RolloutState, parse_strategy
from gateway.store.base import Store
from tests.store.store_helpers import StoreFactory
from tests.store.test_contract_configs import put, spec

pytestmark = pytest.mark.anyio

STRATEGY = parse_strategy({"strategy": "staged", "waves": [{"count": 2}, 50, 100], "min_wave_seconds": 5})


def rollout(name: str = "base", state: RolloutState = "progressing", **changes: object) -> Rollout:
    started = Rollout(
        name=name,
        version=2,
        previous_version=1,
        state="progressing",
        strategy=STRATEGY,
        wave=0,
        cutoff=0.03125,
        started_at=10.0,
        updated_at=10.0,
        wave_started_at=10.0,
    ).moved(10.0, "progressing", "version 2 started")
    if state == started.state and not changes:
        return started
    return started.moved(11.0, state, "test", **changes)


async def _config(store: Store, name: str = "base") -> None:
    await store.put_config(name, put(spec()), 1.0)
    await store.put_config(name, put(spec("v: 2\n")), 2.0)


async def test_create_read_and_list(store: Store) -> None:
    await _config(store)
    assert await store.get_rollout("base") is None
    assert await store.list_rollouts() == []
    rev = await store.put_rollout(rollout(), None)
    assert rev is not None
    stored = await store.get_rollout("base")
    assert stored is not None and stored.rollout == rollout() and stored.rev == rev
    assert await store.list_rollouts() == [rollout()]


async def test_compare_and_set(store: Store) -> None:
    await _config(store)
    first = await store.put_rollout(rollout(), None)
    assert first is not None
    # A create when one exists, or a write naming an old revision, is refused and changes nothing.
    assert await store.put_rollout(rollout(state="paused"), None) is None
    second = await store.put_rollout(rollout(wave=1, cutoff=0.5), first)
    assert second is not None and second != first
    assert await store.put_rollout(rollout(state="halted"), first) is None
    stored = await store.get_rollout("base")
    assert stored is not None and (stored.rollout.wave, stored.rollout.state, stored.rev) == (
        1,
        "progressing",
        second,
    )


async def test_no_record_without_its_config(store: Store) -> None:
    assert await store.put_rollout(rollout("nothing"), None) is None
    assert await store.get_rollout("nothing") is None


async def test_a_record_outlives_config_writes_and_goes_with_the_config(store: Store) -> None:
    await _config(store)
    assert await store.put_rollout(rollout(), None) is not None
    await store.put_config("base", put(spec("v: 3\n")), 3.0)
    stored = await store.get_rollout("base")
    assert stored is not None and stored.rollout == rollout()
    assert await store.put_rollout(rollout(wave=1), stored.rev) is not None
    assert await store.delete_config("base")
    assert await store.get_rollout("base") is None
    assert await store.list_rollouts() == []


async def test_exactly_one_of_two_nodes_wins(store_factory: StoreFactory) -> None:
    node_a, node_b = await store_factory(), await store_factory()
    await _config(node_a)
    created = await node_a.put_rollout(rollout(), None)
    assert created is not None
    seen_a, seen_b = await node_a.get_rollout("base"), await node_b.get_rollout("base")
    assert seen_a is not None and seen_b is not None and seen_a.rev == seen_b.rev == created
    results = await asyncio.gather(
        node_a.put_rollout(rollout(wave=1, cutoff=0.5), created),
        node_b.put_rollout(rollout(state="halted"), created),
    )
    assert sum(r is not None for r in results) == 1
    stored = await node_b.get_rollout("base")
    assert stored is not None
    winner = rollout(wave=1, cutoff=0.5) if results[0] is not None else rollout(state="halted")
    assert stored.rollout == winner
    assert await node_a.list_rollouts() == [winner]
