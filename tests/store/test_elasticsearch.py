"""What the Elasticsearch adapter does beyond the store contract: no index creation, realtime reads
against refreshed searches, optimistic concurrency between nodes, retries of rejected bulk items,
request batching, and documents operators can query."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from typing import Any

import pytest

from gateway.fleet.agent import AgentWrite
from gateway.migrate import migrate
from gateway.store.base import AgentQuery, StoreError, StoreUnavailable
from gateway.store.elasticsearch import ElasticsearchStore
from gateway.store.elasticsearch_client import NotMigrated, make_client
from gateway.store.elasticsearch_documents import agent_document
from gateway.store.elasticsearch_schema import AGENTS_MAPPING_VERSION, agents_index, configs_index
from tests.store.store_helpers import agent, effective_config, full, health, heartbeat, moved, new_uid, touch
from tests.support.es import EsAliases, EsTarget, new_aliases, run_sync

pytestmark = pytest.mark.anyio

NOW = 100_000.0


@pytest.fixture
async def node_a(es_aliases: EsAliases) -> AsyncIterator[ElasticsearchStore]:
    store = es_aliases.store()
    await store.open()
    yield store
    await store.close()


@pytest.fixture
async def node_b(es_aliases: EsAliases) -> AsyncIterator[ElasticsearchStore]:
    store = es_aliases.store()
    await store.open()
    yield store
    await store.close()


@pytest.fixture
def unmigrated(es_target: EsTarget) -> Iterator[EsAliases]:
    aliases = new_aliases(es_target)
    yield aliases
    run_sync(aliases.drop)


async def _raw(aliases: EsAliases, uid: str) -> dict[str, Any]:
    client = make_client(aliases.settings())
    try:
        body: dict[str, Any] = (await client.get(index=aliases.agents, id=uid)).body
        return body
    finally:
        await client.close()


# -- no index creation -----------------------------------------------------------------------------


async def test_a_gateway_never_creates_indices(
    unmigrated: EsAliases, caplog: pytest.LogCaptureFixture
) -> None:
    store = unmigrated.store()
    with caplog.at_level(logging.ERROR, "gateway.store.elasticsearch"):
        await store.open()  # does not raise: the node starts, unready
    try:
        assert "opamp-gateway migrate" in caplog.text
        with pytest.raises(NotMigrated, match="opamp-gateway migrate"):
            await store.ping()
        with pytest.raises(NotMigrated, match="opamp-gateway migrate"):
            await store.write([full(agent())])
        with pytest.raises(NotMigrated):
            await store.get(new_uid())
        client = make_client(unmigrated.settings())
        try:
            found = await client.indices.get_mapping(index=f"{unmigrated.agents}*")
        finally:
            await client.close()
        assert dict(found.body) == {}, "a write must not auto-create the index (require_alias)"
        await unmigrated.migrate()
        await store.ping()
        await store.write([full(agent())])
    finally:
        await store.close()


async def test_ping_names_an_outdated_mapping(unmigrated: EsAliases) -> None:
    old = replace(agents_index(unmigrated.agents, "1s"), version=0)
    client = make_client(unmigrated.settings())
    try:
        await client.indices.create(
            index=old.index_name(1), mappings=old.mappings(), aliases={old.alias: {"is_write_index": True}}
        )
        await migrate(client, [configs_index(unmigrated.configs)])
    finally:
        await client.close()
    store = unmigrated.store()
    try:
        with pytest.raises(
            NotMigrated, match=f"mapping version 0, this gateway needs {AGENTS_MAPPING_VERSION}"
        ):
            await store.ping()
    finally:
        await store.close()


# -- realtime reads, refreshed searches ------------------------------------------------------------


async def test_get_is_realtime_and_searches_wait_for_a_refresh(unmigrated: EsAliases) -> None:
    aliases = replace(unmigrated, refresh_interval="-1")
    await aliases.migrate()
    store = aliases.store(refresh=None)
    try:
        state = agent(last_seen=NOW)
        await store.write([full(state)])
        assert await store.get(state.instance_uid) == state
        assert (await store.list_agents(AgentQuery(), NOW, 300.0)).agents == []
        assert (await store.summary(NOW, 300.0)).total == 0
        client = make_client(aliases.settings())
        try:
            await client.indices.refresh(index=aliases.agents)
        finally:
            await client.close()
        assert (await store.list_agents(AgentQuery(), NOW, 300.0)).agents == [state]
        assert (await store.summary(NOW, 300.0)).total == 1
    finally:
        await store.close()


async def test_pending_commands_are_one_search_of_what_was_last_refreshed(unmigrated: EsAliases) -> None:
    aliases = replace(unmigrated, refresh_interval="-1")
    await aliases.migrate()
    store = aliases.store(refresh=None)
    client = make_client(aliases.settings())
    double = aliases.target.double
    try:
        waiting = agent(last_seen=NOW, pending_command=0)
        await store.write([full(waiting), full(agent(last_seen=NOW))])
        assert await store.pending_commands(10) == {}
        await client.indices.refresh(index=aliases.agents)
        before = dict(double.stats.requests) if double else {}
        assert await store.pending_commands(10) == {waiting.instance_uid: 0}
        if double:
            after = double.stats.requests
            assert after["search"] - before.get("search", 0) == 1 and after["mget"] == before.get("mget", 0)
            assert sum(after.values()) - sum(before.values()) == 1
        # Cleared (realtime for get), but listed until the next refresh.
        delivered = replace(waiting, pending_command=None)
        await store.write([AgentWrite(state=delivered, changed=frozenset({"pending_command"}))])
        assert await store.get(waiting.instance_uid) == delivered
        assert await store.pending_commands(10) == {waiting.instance_uid: 0}
        await client.indices.refresh(index=aliases.agents)
        assert await store.pending_commands(10) == {}
    finally:
        await client.close()
        await store.close()


async def test_a_foreign_document_with_a_command_is_a_store_error(
    es_aliases: EsAliases, node_a: ElasticsearchStore
) -> None:
    client = make_client(es_aliases.settings())
    try:
        foreign = {"type": "OPAMP", "active": True, "opamp": {"pending_command": 0}}
        await client.index(index=es_aliases.agents, id="not-a-uid", document=foreign, refresh=True)
    finally:
        await client.close()
    with pytest.raises(StoreError, match="'not-a-uid'.* is not an agent document of this gateway"):
        await node_a.pending_commands(10)


# -- out-of-order writes from two nodes ------------------------------------------------------------


async def test_a_stale_node_never_moves_a_record_backwards(
    node_a: ElasticsearchStore, node_b: ElasticsearchStore
) -> None:
    first = agent(last_seen=10.0, sequence_num=1, node="a", transport="websocket")
    await node_a.write([full(first)])
    # Both nodes have read the record (each now knows its sequence number).
    assert await node_b.get(first.instance_uid) == first
    # The agent reconnected to node B, which wrote first; node A's later flush is older.
    on_b = replace(first, last_seen=12.0, sequence_num=3, node="b", health=health(False))
    await node_b.write([full(on_b)])
    from_a = replace(first, last_seen=11.0, sequence_num=2, node="a", disconnected=True)
    await node_a.write([full(from_a)])
    await node_a.write([touch(replace(from_a, last_seen=11.5))])
    for node in (node_a, node_b):
        assert await node.get(first.instance_uid) == on_b


async def test_a_node_whose_view_is_stale_re_reads_and_still_applies_newer_writes(
    es_aliases: EsAliases, node_a: ElasticsearchStore, node_b: ElasticsearchStore
) -> None:
    first = agent(last_seen=10.0, pending_command=0)
    await node_a.write([full(first)])
    await node_b.get(first.instance_uid)
    # Node A changes the record; node B still holds the older sequence number.
    second = heartbeat(first, 11.0)
    await node_a.write([touch(second)])
    requests = dict(es_aliases.double.stats.requests) if es_aliases.target.double else {}
    third = replace(heartbeat(second, 12.0), health=health(False), pending_command=None)
    await node_b.write([full(third)])
    if es_aliases.target.double:
        after = es_aliases.double.stats.requests
        # A 409, one re-read of the document, then the conditional write again.
        assert after["bulk"] - requests["bulk"] == 2
        assert after["mget"] - requests["mget"] == 1
    # Applied over the conflict, and the command nobody named survives.
    assert await node_a.get(first.instance_uid) == replace(third, pending_command=0)


async def test_concurrent_nodes_converge_on_the_newest_write(es_aliases: EsAliases) -> None:
    stores = [es_aliases.store() for _ in range(3)]
    try:
        base = agent(last_seen=1.0)
        await stores[0].write([full(base)])
        writes = [
            (i % 3, full(replace(base, last_seen=float(i), sequence_num=i, node=f"n{i % 3}")))
            for i in range(2, 32)
        ]
        # Every node writes its share at once, in an order that has nothing to do with last_seen.
        await asyncio.gather(*(stores[n].write([w]) for n, w in reversed(writes)))
        newest = max(writes, key=lambda nw: nw[1].state.last_seen)[1].state
        for store in stores:
            assert await store.get(base.instance_uid) == newest
    finally:
        for store in stores:
            await store.close()


async def test_a_late_write_for_a_moved_uid_is_dropped_on_another_node(
    node_a: ElasticsearchStore, node_b: ElasticsearchStore
) -> None:
    old = agent(last_seen=10.0)
    await node_a.write([full(old)])
    await node_b.get(old.instance_uid)  # node B knows the record as it was before the move
    move = moved(old, new_uid(), 11.0)
    await node_a.write([move])
    await node_b.write([full(replace(old, last_seen=12.0))])
    assert await node_b.get(old.instance_uid) == move.state
    assert (await node_b.list_agents(AgentQuery(), NOW, 1e9)).agents == [move.state]


# -- back-pressure: rejected bulk items ------------------------------------------------------------


async def test_rejected_bulk_items_are_retried(es_aliases: EsAliases, node_a: ElasticsearchStore) -> None:
    double = es_aliases.double
    fleet = [agent(last_seen=NOW) for _ in range(5)]
    before = double.stats.requests["bulk"]
    double.faults.reject_bulk_items = 3
    await node_a.write([full(a) for a in fleet])
    assert double.faults.reject_bulk_items == 0
    assert double.stats.requests["bulk"] - before >= 2
    for state in fleet:
        assert await node_a.get(state.instance_uid) == state


async def test_items_rejected_for_good_raise_store_unavailable(
    es_aliases: EsAliases, node_a: ElasticsearchStore
) -> None:
    double = es_aliases.double
    state = agent(last_seen=NOW)
    double.faults.reject_bulk_items = 1_000
    try:
        with pytest.raises(StoreUnavailable, match="es_rejected_execution_exception"):
            await node_a.write([full(state)])
    finally:
        double.faults.reject_bulk_items = 0
    assert await node_a.get(state.instance_uid) is None
    await node_a.write([full(state)])
    assert await node_a.get(state.instance_uid) == state


async def test_a_rejected_request_is_retried_by_the_client(
    es_aliases: EsAliases, node_a: ElasticsearchStore
) -> None:
    double = es_aliases.double
    double.faults.reject_requests = 1
    double.faults.reject_endpoints = frozenset({"bulk"})
    try:
        state = agent(last_seen=NOW)
        await node_a.write([full(state)])
        assert double.faults.reject_requests == 0
    finally:
        double.faults.reject_endpoints = frozenset()
    assert await node_a.get(state.instance_uid) == state


# -- request economy -------------------------------------------------------------------------------


async def test_gets_in_one_turn_share_one_mget(es_aliases: EsAliases, node_a: ElasticsearchStore) -> None:
    double = es_aliases.double
    fleet = [agent(last_seen=NOW) for _ in range(20)]
    await node_a.write([full(a) for a in fleet])
    before = double.stats.requests["mget"]
    got = await asyncio.gather(*(node_a.get(a.instance_uid) for a in fleet))
    assert got == fleet
    assert double.stats.requests["mget"] - before == 1


async def test_large_flushes_are_split_below_one_mebibyte(
    es_aliases: EsAliases, node_a: ElasticsearchStore
) -> None:
    double = es_aliases.double
    body = "processors:\n  batch: {}\n" * 400  # ~10 KB per agent, stored twice (raw and readable)
    fleet = [agent(last_seen=NOW, effective_config=effective_config(body)) for _ in range(150)]
    before = len(double.stats.bulk_bytes)
    await node_a.write([full(a) for a in fleet])
    sizes = double.stats.bulk_bytes[before:]
    assert len(sizes) >= 3
    assert max(sizes) < 1 << 20
    assert sum(double.stats.bulk_sizes[before:]) == len(fleet)
    for state in fleet[:: len(fleet) // 5]:
        assert await node_a.get(state.instance_uid) == state


async def test_heartbeats_are_partial_updates(es_aliases: EsAliases, node_a: ElasticsearchStore) -> None:
    double = es_aliases.double
    state = agent(last_seen=NOW, effective_config=effective_config("x: 1\n" * 2000))
    await node_a.write([full(state)])
    before = len(double.stats.bulk_bytes)
    await node_a.write([touch(heartbeat(state, NOW + 1))])
    assert double.stats.bulk_bytes[before] < 1000, "a heartbeat must not resend the whole document"


# -- documents -------------------------------------------------------------------------------------


async def test_documents_are_fleet_style(es_aliases: EsAliases, node_a: ElasticsearchStore) -> None:
    state = agent(
        last_seen=1_700_000_000.5,
        service_version="0.121.0",
        host_name="web-1",
        effective_config=effective_config("receivers: {}\n"),
        node="gw-1",
        transport="websocket",
    )
    await node_a.write([full(state)])
    doc = await _raw(es_aliases, state.uid)
    source = doc["_source"]
    assert doc["_id"] == state.uid
    assert source["type"] == "OPAMP" and source["active"] is True
    assert source["agent"] == {"id": state.uid, "type": "otelcol-contrib", "version": "0.121.0"}
    assert source["last_checkin"] == "2023-11-14T22:13:20.500Z"
    assert source["last_checkin_status"] == "online"
    assert source["local_metadata"]["host"]["hostname"] == "web-1"
    assert source["local_metadata"]["os"]["type"] == "linux"
    assert source["tags"] == ["otelcol-contrib"]
    assert source["sequence_num"] == 1
    assert "ReportsStatus" in source["capabilities"]
    assert source["health"]["healthy"] is True
    assert source["effective_config"]["files"][""]["body"] == "receivers: {}\n"
    assert source["attributes"]["host.name"] == "web-1"
    assert source["identifying_attributes"]["service.name"] == "otelcol-contrib"
    assert source["connection"] == {"node": "gw-1", "transport": "websocket"}
    move = moved(state, new_uid(), NOW)
    await node_a.write([move])
    gone = (await _raw(es_aliases, state.uid))["_source"]
    assert gone["active"] is False and gone["opamp"]["moved_to"] == move.state.uid


async def test_a_document_elasticsearch_refuses_is_dropped_and_logged(
    node_a: ElasticsearchStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    bad, good = agent(last_seen=NOW), agent(last_seen=NOW)
    real = agent_document

    def with_a_bug(state: Any) -> dict[str, Any]:
        document = real(state)
        if state.instance_uid == bad.instance_uid:
            document["not_in_the_mapping"] = True
        return document

    monkeypatch.setattr("gateway.store.elasticsearch_documents.agent_document", with_a_bug)
    with caplog.at_level(logging.ERROR, "gateway.store.elasticsearch"):
        await node_a.write([full(bad), full(good)])
    assert "strict_dynamic_mapping_exception" in caplog.text
    assert await node_a.get(bad.instance_uid) is None
    assert await node_a.get(good.instance_uid) == good


async def test_pending_command_lands_even_from_a_stale_write(node_a: ElasticsearchStore) -> None:
    state = agent(last_seen=20.0)
    await node_a.write([full(state)])
    request = replace(state, last_seen=10.0, pending_command=0)
    await node_a.write([AgentWrite(state=request, changed=frozenset({"pending_command"}))])
    assert await node_a.get(state.instance_uid) == replace(state, pending_command=0)


# -- Elasticsearch's limits ---------------------------------------------------------------------------


async def test_an_oversized_report_is_stored_without_it_and_flagged(
    es_aliases: EsAliases, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gateway.store import elasticsearch_documents

    monkeypatch.setattr(elasticsearch_documents, "MAX_DOCUMENT_BYTES", 64 << 10)
    counted: list[int] = []
    store = ElasticsearchStore(
        make_client(es_aliases.settings()),
        agents_alias=es_aliases.agents,
        configs_alias=es_aliases.configs,
        refresh="true",
        on_oversized=lambda: counted.append(1),
    )
    try:
        big = agent(last_seen=1.0, effective_config=effective_config("x" * (80 << 10)))
        small = agent(last_seen=1.0, effective_config=effective_config("y" * (20 << 10)))
        await store.write([full(big), full(small)])
        stored = await store.get(big.instance_uid)
        assert stored == replace(big, effective_config=None, oversized=("effective_config",))
        # Fits once the rendered copy of the files is left out: nothing is lost, nothing flagged.
        assert await store.get(small.instance_uid) == small
        assert counted == [1]
        # A later full write from that record keeps the flag; a smaller report clears it.
        assert stored is not None
        again = replace(stored, last_seen=2.0, health=health(True))
        await store.write([full(again)])
        assert await store.get(big.instance_uid) == again
        fixed = replace(again, last_seen=3.0, effective_config=effective_config("ok"), oversized=())
        await store.write([full(fixed)])
        assert await store.get(big.instance_uid) == fixed
    finally:
        await store.close()


async def test_a_request_over_the_cluster_limit_is_split_and_never_retried_for_ever() -> None:
    from harness.es_double import EsDouble

    with EsDouble(max_content_length=200_000) as double:
        aliases = new_aliases(EsTarget(double.url, double))
        await aliases.migrate()
        rejected: list[int] = []
        store = ElasticsearchStore(
            make_client(aliases.settings()),
            agents_alias=aliases.agents,
            configs_alias=aliases.configs,
            on_rejected=lambda: rejected.append(1),
        )
        try:
            big = agent(last_seen=1.0, effective_config=effective_config("x" * 150_000))
            others = [agent(last_seen=1.0) for _ in range(3)]
            await store.write([full(big), *(full(a) for a in others)])
            for state in others:
                assert await store.get(state.instance_uid) == state
            assert await store.get(big.instance_uid) is None
            assert rejected == [1]
            # All four, then the half with it, then it alone: bounded, never the same request again.
            assert double.stats.requests["too_large"] == 3
        finally:
            await store.close()


async def test_an_immense_agent_supplied_hash_does_not_lose_the_document(node_a: ElasticsearchStore) -> None:
    from tests.store.store_helpers import remote_config_status

    state = agent(last_seen=1.0, remote_config_status=remote_config_status(b"\x07" * (20 << 10)))
    state = replace(state, failed_config_hash=b"\x08" * (20 << 10))
    await node_a.write([full(state)])
    assert await node_a.get(state.instance_uid) == state


async def test_a_remembered_seq_no_does_not_survive_a_reindex(
    es_aliases: EsAliases, node_a: ElasticsearchStore, node_b: ElasticsearchStore
) -> None:
    """After migrate copies into a new index, sequence numbers restart: a node's remembered if_seq_no
    may match another version there, and must not move the record backwards."""
    from dataclasses import replace as change

    from gateway.store.elasticsearch_schema import AGENT_PROPERTIES

    uid = new_uid()
    state = agent(uid, last_seen=10.0)
    await node_a.write([full(state)])
    for n in range(11, 15):
        await node_a.write([full(replace(state, last_seen=float(n)))])
    seen = await node_b.get(uid)  # node B remembers this version's seq_no (4)
    assert seen is not None and seen.last_seen == 14.0
    later = change(
        agents_index(es_aliases.agents, es_aliases.refresh_interval),
        version=AGENTS_MAPPING_VERSION + 1,
        properties={**AGENT_PROPERTIES, "added_later": {"type": "keyword"}},
    )
    client = make_client(es_aliases.settings())
    try:
        await migrate(client, [later, configs_index(es_aliases.configs)])
    finally:
        await client.close()
    # In the copy, the document restarts from seq_no 0; four more writes bring it to B's number.
    for n in range(15, 19):
        await node_a.write([full(replace(state, last_seen=float(n)))])
    await node_b.write([full(replace(state, last_seen=16.0))])
    found = await node_a.get(uid)
    assert found is not None and found.last_seen == 18.0
