"""Forgetting on Elasticsearch beyond the contract: the sweep's `_delete_by_query` works on the last
refreshed view, so an agent written since (it came back) is a version conflict and keeps its record;
a store failure is a StoreError."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace

import pytest

from gateway.store.base import StoreError
from gateway.store.elasticsearch_client import make_client
from tests.store.store_helpers import agent, full
from tests.support.es import EsAliases, EsTarget, new_aliases, run_sync

pytestmark = pytest.mark.anyio


@pytest.fixture
def aliases(es_target: EsTarget) -> Iterator[EsAliases]:
    made = replace(new_aliases(es_target), refresh_interval="-1")
    run_sync(made.migrate)
    yield made
    run_sync(made.drop)


async def test_an_agent_written_since_the_last_refresh_is_not_forgotten(aliases: EsAliases) -> None:
    store = aliases.store(refresh=None)
    client = make_client(aliases.settings())
    try:
        back, gone = agent(last_seen=10.0), agent(last_seen=10.0)
        await store.write([full(back), full(gone)])
        await client.indices.refresh(index=aliases.agents)
        # `back` sends a message after the refresh (still before the cutoff in this test's clock).
        came_back = replace(back, last_seen=11.0, sequence_num=back.sequence_num + 1)
        await store.write([full(came_back)])
        assert await store.forget_unseen(50.0, 100) == 1
        assert await store.get(gone.instance_uid) is None
        assert await store.get(back.instance_uid) == came_back
    finally:
        await client.close()
        await store.close()


async def test_a_store_that_cannot_delete_raises_store_error(aliases: EsAliases, es_target: EsTarget) -> None:
    if es_target.double is None:
        pytest.skip("needs the double's fault injection")
    store = aliases.store()
    try:
        await store.write([full(agent(last_seen=10.0))])
        es_target.double.down()
        try:
            with pytest.raises(StoreError):
                await store.forget_unseen(50.0, 10)
        finally:
            es_target.double.up()
    finally:
        await store.close()
