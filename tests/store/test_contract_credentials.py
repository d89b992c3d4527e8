"""The store contract for per-agent credential records: every adapter runs it (see test_contract).

Compare-and-set from any node, never changed by an agent write (a node's stale copy, a heartbeat),
gone with a record that moves or is forgotten, shown and filtered in the inventory."""

from __future__ import annotations

import pytest

from gateway.fleet import credentials
from gateway.fleet.credentials import AgentCredential
from gateway.store.base import MAX_PAGE_SIZE, AgentQuery, Store
from tests.store.store_helpers import StoreFactory, agent, full, moved, new_uid, touch
from tests.store.test_contract import NOW, OFFLINE_AFTER, list_all

pytestmark = pytest.mark.anyio

PENDING = AgentCredential(pending=credentials.digest_of("one"), opamp_hash=b"\x01" * 32, updated_at=10.0)
ACTIVE = AgentCredential(active=credentials.digest_of("one"), opamp_hash=b"\x01" * 32, updated_at=11.0)
ROTATING = AgentCredential(
    active=credentials.digest_of("one"),
    pending=credentials.digest_of("two"),
    opamp_hash=b"\x02" * 32,
    rotate=False,
    updated_at=12.5,
)
REVOKED = AgentCredential(revoked=True, updated_at=13.0)


async def test_compare_and_set_seen_by_every_node(store_factory: StoreFactory) -> None:
    node_a, node_b = await store_factory(), await store_factory()
    stored = agent(last_seen=10.0)
    await node_a.write([full(stored)])
    uid = stored.instance_uid
    assert await node_b.get_credentials([uid]) == {}
    assert await node_a.put_credential(uid, None, PENDING)
    assert await node_b.get_credentials([uid]) == {uid: PENDING}
    # Node B decided on an older read: refused, nothing written.
    assert not await node_b.put_credential(uid, None, REVOKED)
    assert await node_b.put_credential(uid, PENDING, ACTIVE)
    assert await node_a.get_credentials([uid, new_uid()]) == {uid: ACTIVE}
    assert await node_a.put_credential(uid, ACTIVE, ROTATING)
    assert (await node_b.get_credentials([uid]))[uid] == ROTATING
    # Cleared: back on shared keys.
    assert await node_b.put_credential(uid, ROTATING, None)
    assert await node_a.get_credentials([uid]) == {}
    assert await node_a.put_credential(uid, None, REVOKED)
    assert await node_b.get_credentials([uid]) == {uid: REVOKED}


async def test_no_record_no_credential(store: Store) -> None:
    uid = new_uid()
    assert not await store.put_credential(uid, None, PENDING)
    assert await store.get_credentials([uid]) == {}
    assert await store.get(uid) is None


async def test_agent_writes_never_change_it(store_factory: StoreFactory) -> None:
    node_a, node_b = await store_factory(), await store_factory()
    stored = agent(last_seen=10.0)
    await node_a.write([full(stored)])
    uid = stored.instance_uid
    assert await node_b.put_credential(uid, None, ACTIVE)
    # Node A writes from its copy of the record (it never saw the credential): a full write, a touch,
    # a write of a changed description; the credential stays, and the record is unchanged by it.
    later = agent(uid=uid, last_seen=20.0, host_name="renamed")
    await node_a.write([full(later)])
    await node_a.write([touch(agent(uid=uid, last_seen=21.0, host_name="renamed"))])
    assert await node_b.get_credentials([uid]) == {uid: ACTIVE}
    got = await node_b.get(uid)
    assert got is not None and got.last_seen == 21.0
    assert await node_a.put_credential(uid, ACTIVE, REVOKED)
    await node_b.write([full(agent(uid=uid, last_seen=22.0, host_name="again"))])
    assert await node_a.get_credentials([uid]) == {uid: REVOKED}


async def test_gone_with_a_forgotten_record(store: Store) -> None:
    stored = agent(last_seen=10.0)
    await store.write([full(stored)])
    uid = stored.instance_uid
    assert await store.put_credential(uid, None, REVOKED)
    assert await store.forget(uid) == uid
    assert await store.get_credentials([uid]) == {}
    # Enrolled again: on shared keys.
    await store.write([full(agent(uid=uid, last_seen=30.0))])
    assert await store.get_credentials([uid]) == {}


async def test_a_record_that_moves_leaves_it_behind(store: Store) -> None:
    stored = agent(last_seen=10.0)
    await store.write([full(stored)])
    assert await store.put_credential(stored.instance_uid, None, PENDING)
    new = new_uid()
    await store.write([moved(stored, new, 11.0)])
    assert await store.get_credentials([stored.instance_uid, new]) == {}
    assert not await store.put_credential(stored.instance_uid, PENDING, ACTIVE)


async def test_listed_with_the_agents_and_filtered_by_kind(store: Store) -> None:
    shared, offered, own, revoked = agent(), agent(), agent(), agent()
    await store.write([full(a) for a in (shared, offered, own, revoked)])
    assert await store.put_credential(offered.instance_uid, None, PENDING)
    assert await store.put_credential(own.instance_uid, None, ACTIVE)
    assert await store.put_credential(revoked.instance_uid, None, REVOKED)

    async def kind(name: credentials.Kind) -> set[bytes]:
        return {
            a.instance_uid for a in await list_all(store, AgentQuery(credential=name, limit=MAX_PAGE_SIZE))
        }

    assert await kind("shared") == {shared.instance_uid, offered.instance_uid}
    assert await kind("per_agent") == {own.instance_uid}
    assert await kind("revoked") == {revoked.instance_uid}
    page = await store.list_agents(AgentQuery(limit=MAX_PAGE_SIZE), NOW, OFFLINE_AFTER)
    assert page.credentials == {
        offered.instance_uid: PENDING,
        own.instance_uid: ACTIVE,
        revoked.instance_uid: REVOKED,
    }
