"""Connection settings in Elasticsearch (gateway/store/elasticsearch_settings.py), on the wire double:
a document that is not readable settings is a StoreError naming it, and nodes writing one setting at
once all succeed in turn (each 409 is read again and decided again)."""

from __future__ import annotations

import asyncio

import pytest

from gateway.fleet.connection_settings import SettingsSpec, parse_spec
from gateway.store.base import StoreError
from gateway.store.elasticsearch_client import make_client
from tests.support.es import EsAliases

pytestmark = pytest.mark.anyio


def _spec(endpoint: str) -> SettingsSpec:
    return parse_spec("x", {"selector": {}, "own_metrics": {"destination_endpoint": endpoint}})


async def test_an_unreadable_document_is_a_store_error(es_aliases: EsAliases) -> None:
    client = make_client(es_aliases.settings())
    try:
        broken = {"kind": "connection_settings", "name": "broken", "spec": {"selector": 3}}
        await client.index(
            index=es_aliases.configs, id="connection-settings~broken", document=broken, refresh=True
        )
    finally:
        await client.close()
    store = es_aliases.store()
    await store.open()
    try:
        with pytest.raises(StoreError, match="'connection-settings~broken'"):
            await store.list_connection_settings()
        # Configs never see it.
        assert await store.list_configs() == []
    finally:
        await store.close()


async def test_concurrent_writes_all_land(es_aliases: EsAliases) -> None:
    stores = [es_aliases.store() for _ in range(3)]
    for store in stores:
        await store.open()
    try:
        results = await asyncio.gather(
            *(
                s.put_connection_settings("shared", _spec(f"https://n{i}.example.com"), 1.0)
                for i, s in enumerate(stores)
            )
        )
        assert all(changed for _, changed in results)
        assert sorted(stored.version for stored, _ in results) == [1, 2, 3]
        final = await stores[0].get_connection_settings("shared")
        assert final is not None and final.version == 3
    finally:
        for store in stores:
            await store.close()
