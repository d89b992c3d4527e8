"""The store contract for connection settings: every adapter runs it (see test_contract)."""

from __future__ import annotations

import pytest

from gateway.fleet.connection_settings import SettingsSpec, parse_spec
from gateway.store.base import Store
from tests.store.store_helpers import StoreFactory

pytestmark = pytest.mark.anyio


def spec(endpoint: str = "https://otlp.example.com/v1/metrics", priority: int = 0) -> SettingsSpec:
    return parse_spec(
        "x",
        {
            "selector": {"match": {"service.name": "otelcol-contrib"}},
            "priority": priority,
            "own_metrics": {"destination_endpoint": endpoint, "headers": {"Authorization": "Bearer t"}},
            "other_connections": {"backup": {"destination_endpoint": "https://b.example.com"}},
        },
    )


async def test_put_get_list_delete(store: Store) -> None:
    assert await store.list_connection_settings() == []
    assert await store.get_connection_settings("telemetry") is None
    stored, changed = await store.put_connection_settings("telemetry", spec(), 10.0)
    assert changed and stored.version == 1 and stored.created_at == stored.updated_at == 10.0
    assert stored.hash == spec().digest()
    assert await store.get_connection_settings("telemetry") == stored
    await store.put_connection_settings("another", spec(priority=3), 11.0)
    assert [s.name for s in await store.list_connection_settings()] == ["another", "telemetry"]
    assert await store.delete_connection_settings("telemetry")
    assert not await store.delete_connection_settings("telemetry")
    assert await store.get_connection_settings("telemetry") is None
    assert [s.name for s in await store.list_connection_settings()] == ["another"]


async def test_identical_put_changes_nothing_and_a_change_counts_up(store: Store) -> None:
    first, _ = await store.put_connection_settings("telemetry", spec(), 10.0)
    again, changed = await store.put_connection_settings("telemetry", spec(), 20.0)
    assert not changed and again == first
    second, changed = await store.put_connection_settings("telemetry", spec("https://new.example.com"), 30.0)
    assert changed and second.version == 2 and second.created_at == 10.0 and second.updated_at == 30.0
    assert (await store.get_connection_settings("telemetry")) == second


async def test_settings_are_not_configs(store: Store) -> None:
    await store.put_connection_settings("telemetry", spec(), 10.0)
    assert await store.list_configs() == []
    assert await store.get_config("telemetry") is None
    assert await store.list_rollouts() == []


async def test_seen_by_another_node(store_factory: StoreFactory) -> None:
    one, two = await store_factory(), await store_factory()
    await one.put_connection_settings("telemetry", spec(), 10.0)
    assert [s.name for s in await two.list_connection_settings()] == ["telemetry"]
