"""The store contract for config versions: every adapter runs it (see test_contract)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from gateway.fleet.configs import ConfigFile
from gateway.fleet.selector import Selector
from gateway.fleet.versions import KEEP_VERSIONS, ConfigVersion
from gateway.fleet.waves import parse_strategy
from gateway.store.base import Store
from tests.store.store_helpers import StoreFactory
from tests.store.test_contract_configs import put, spec

pytestmark = pytest.mark.anyio


async def test_a_new_config_has_one_version(store: Store) -> None:
    config, _ = await store.put_config("base", put(spec()), 100.0)
    assert await store.config_versions("base") == [ConfigVersion(1, config.hash, 100.0, config.spec)]


async def test_no_config_has_no_versions(store: Store) -> None:
    assert await store.config_versions("missing") == []


async def test_each_change_adds_a_version_newest_first(store: Store) -> None:
    first, _ = await store.put_config("base", put(spec()), 100.0)
    await store.put_config("base", put(spec()), 150.0)  # identical: no new version
    second, _ = await store.put_config("base", put(spec(selector=Selector(match=(("env", "prod"),)))), 200.0)
    third, _ = await store.put_config("base", put(spec("exporters: {}\n")), 300.0)
    versions = await store.config_versions("base")
    assert [(v.version, v.hash, v.created_at) for v in versions] == [
        (3, third.hash, 300.0),
        (2, second.hash, 200.0),
        (1, first.hash, 100.0),
    ]
    assert [v.spec for v in versions] == [third.spec, second.spec, first.spec]
    assert await store.get_config("base") == third
    assert await store.list_configs() == [third]


async def test_only_the_last_versions_are_kept(store: Store) -> None:
    total = KEEP_VERSIONS + 3
    for n in range(1, total + 1):
        await store.put_config("busy", put(spec(f"n: {n}\n")), float(n))
    versions = await store.config_versions("busy")
    assert [v.version for v in versions] == list(range(total, total - KEEP_VERSIONS, -1))
    assert versions[-1].spec == spec(f"n: {total - KEEP_VERSIONS + 1}\n")


async def test_delete_forgets_the_history(store: Store) -> None:
    await store.put_config("gone", put(spec()), 1.0)
    await store.put_config("gone", put(spec("b: 2\n")), 2.0)
    assert await store.delete_config("gone")
    assert await store.config_versions("gone") == []
    again, _ = await store.put_config("gone", put(spec("c: 3\n")), 3.0)
    assert [(v.version, v.hash) for v in await store.config_versions("gone")] == [(1, again.hash)]


async def test_binary_files_round_trip_in_versions(store: Store) -> None:
    binary = spec(files={"b.bin": ConfigFile("application/octet-stream", bytes(range(256)))})
    await store.put_config("bin", put(binary), 1.0)
    assert [v.spec for v in await store.config_versions("bin")] == [binary]


async def test_versions_are_shared_by_nodes(store_factory: StoreFactory) -> None:
    node_a, node_b = await store_factory(), await store_factory()
    await node_a.put_config("shared", put(spec()), 1.0)
    await node_b.put_config("shared", put(spec("y: 2\n"), expected=1), 2.0)
    assert [v.version for v in await node_a.config_versions("shared")] == [2, 1]


async def test_a_staged_strategy_is_kept_with_the_config_and_its_versions(store: Store) -> None:
    staged = replace(
        spec(),
        rollout=parse_strategy({"strategy": "staged", "waves": [{"count": 3}, 50], "min_wave_seconds": 5}),
    )
    await store.put_config("base", put(spec()), 100.0)
    config, changed = await store.put_config("base", put(staged), 200.0)
    # The strategy alone is a change: a new version.
    assert changed and config.version == 2 and config.spec.rollout == staged.rollout
    assert await store.get_config("base") == config
    assert [v.spec.rollout.staged for v in await store.config_versions("base")] == [True, False]
