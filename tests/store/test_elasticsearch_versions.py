"""Config versions in Elasticsearch: documents written before versions existed (no `history`) and
history documents this gateway cannot read."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from gateway.fleet.configs import Config
from gateway.store.base import StoreError
from gateway.store.elasticsearch import ElasticsearchStore
from gateway.store.elasticsearch_client import make_client
from gateway.store.elasticsearch_documents import config_document
from tests.store.test_contract_configs import put, spec
from tests.support.es import EsAliases

pytestmark = pytest.mark.anyio


@pytest.fixture
async def store(es_aliases: EsAliases) -> AsyncIterator[ElasticsearchStore]:
    opened = es_aliases.store()
    await opened.open()
    yield opened
    await opened.close()


async def _index(aliases: EsAliases, name: str, document: dict[str, object]) -> None:
    client = make_client(aliases.settings())
    try:
        await client.index(index=aliases.configs, id=name, document=document, refresh=True)
    finally:
        await client.close()


async def test_a_document_without_history_starts_it_at_its_version(
    store: ElasticsearchStore, es_aliases: EsAliases
) -> None:
    old = Config("old", spec(), 4, 10.0, 20.0, spec().digest())
    await _index(es_aliases, "old", config_document(old))
    assert [(v.version, v.hash, v.created_at) for v in await store.config_versions("old")] == [
        (4, old.hash, 20.0)
    ]
    assert await store.get_config("old") == old
    changed, _ = await store.put_config("old", put(spec("b: 2\n")), 30.0)
    assert [v.version for v in await store.config_versions("old")] == [5, 4]
    assert await store.list_configs() == [changed]


async def test_an_unreadable_history_is_a_store_error(
    store: ElasticsearchStore, es_aliases: EsAliases
) -> None:
    bad = Config("bad", spec(), 1, 10.0, 10.0, spec().digest())
    await _index(es_aliases, "bad", {**config_document(bad), "history": [{"version": "x"}]})
    assert await store.get_config("bad") == bad
    with pytest.raises(StoreError, match="config document 'bad'"):
        await store.config_versions("bad")


async def test_an_unreadable_rollout_record_is_a_store_error(
    store: ElasticsearchStore, es_aliases: EsAliases
) -> None:
    config = Config("odd", spec(), 1, 10.0, 10.0, spec().digest())
    await _index(es_aliases, "odd", {**config_document(config), "rollout_record": {"state": "?"}})
    with pytest.raises(StoreError, match="rollout record of config 'odd'"):
        await store.get_rollout("odd")
    with pytest.raises(StoreError, match="rollout record of config 'odd'"):
        await store.list_rollouts()
