"""The store contract: every Store adapter must pass this suite unchanged.

The adapters are the `store_factory` fixture's params, in tests/store/conftest.py.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Callable
from dataclasses import replace

import pytest

from gateway.fleet.agent import AgentState, AgentWrite, facts
from gateway.fleet.status import STATUSES, Status, derive_status
from gateway.store.base import (
    MAX_PAGE_SIZE,
    MAX_PENDING_COMMANDS,
    AgentQuery,
    FleetSummary,
    InvalidCursor,
    Store,
)
from tests.store.store_helpers import (
    StoreFactory,
    agent,
    description,
    effective_config,
    full,
    health,
    heartbeat,
    moved,
    new_uid,
    remote_config_status,
    touch,
    uid_from_int,
)

pytestmark = pytest.mark.anyio

NOW = 100_000.0
OFFLINE_AFTER = 300.0


async def list_all(store: Store, query: AgentQuery | None = None, now: float = NOW) -> list[AgentState]:
    query = query or AgentQuery(limit=MAX_PAGE_SIZE)
    agents: list[AgentState] = []
    while True:
        page = await store.list_agents(query, now, OFFLINE_AFTER)
        agents.extend(page.agents)
        if page.next_cursor is None:
            return agents
        query = replace(query, cursor=page.next_cursor)


async def uids(
    store: Store,
    now: float = NOW,
    *,
    status: Status | None = None,
    q: str | None = None,
    attributes: dict[str, str] | None = None,
) -> set[bytes]:
    query = AgentQuery(status=status, q=q, attributes=attributes or {}, limit=MAX_PAGE_SIZE)
    return {a.instance_uid for a in await list_all(store, query, now)}


# -- get / write -----------------------------------------------------------------------------------


async def test_get_missing_is_none(store: Store) -> None:
    assert await store.get(new_uid()) is None


async def test_empty_batch_is_a_no_op(store: Store) -> None:
    await store.write([])
    assert await list_all(store) == []


async def test_roundtrip_every_field(store: Store) -> None:
    everything = AgentState(
        instance_uid=new_uid(),
        enrolled_at=1_700_000_000.123456,
        last_seen=1_700_000_123.987654,
        sequence_num=2**64 - 1,  # uint64 on the wire
        capabilities=2**63 + 0x7FF,
        description=description(
            {"service.name": "otelcol-contrib", "service.version": "0.120.0", "service.instance.id": "x"},
            {"host.name": "h", "os.type": "linux", "list": [1, "a", True], "map": {"k": 1.5}, "raw": b"\0"},
        ),
        health=health(False, last_error="exporter failing"),
        effective_config=effective_config("exporters:\n  debug: {}\n" * 50),
        remote_config_status=remote_config_status(),
        disconnected=True,
        previous_instance_uids=(new_uid(), new_uid()),
        pending_command=0,  # CommandType_Restart is 0: None and 0 must stay apart
        command_id="0193a1b2c3d4",
        node="gateway-7",
        transport="websocket",
        offered_config_hash=b"\x02" * 32,
        offered_at=1_700_000_100.5,
        failed_config_hash=b"\x03" * 32,
        duplicate_of=new_uid(),
        available_components=b"\x0a\x05hash!",
        offered_settings_hash=b"\x04" * 32,
        key_id="edge-eu",
        connection_settings_status=b"\x0a\x20" + b"\x05" * 32 + b"\x10\x01",
        package_statuses=b"\x12\x03abc",
        offered_packages_hash=b"\x06" * 32,
        offered_packages_at=1_700_000_101.25,
    )
    bare = AgentState(instance_uid=new_uid(), enrolled_at=5.0, last_seen=5.0)
    await store.write([full(everything), full(bare)])
    assert await store.get(everything.instance_uid) == everything
    assert await store.get(bare.instance_uid) == bare
    assert sorted(await list_all(store), key=lambda a: a.uid) == sorted(
        [everything, bare], key=lambda a: a.uid
    )


async def test_full_write_replaces_every_field(store: Store) -> None:
    before = agent(last_seen=10.0, effective_config=effective_config("a"), disconnected=True)
    after = replace(
        before,
        last_seen=20.0,
        sequence_num=7,
        description=description({"service.name": "other"}),
        health=None,
        effective_config=None,
        disconnected=False,
    )
    await store.write([full(before)])
    await store.write([full(after)])
    assert await store.get(before.instance_uid) == after


async def test_touch_updates_only_the_heartbeat_fields(store: Store) -> None:
    stored = agent(last_seen=10.0, sequence_num=3, node="a", transport="http", pending_command=0)
    await store.write([full(stored)])
    # A touch carries the whole record, but only the heartbeat fields may be written from it.
    stale_rest = replace(
        stored, last_seen=11.0, sequence_num=4, node="b", health=None, description=None, pending_command=None
    )
    await store.write([touch(stale_rest)])
    assert await store.get(stored.instance_uid) == replace(stored, last_seen=11.0, sequence_num=4, node="b")


async def test_touch_of_a_missing_record_creates_it(store: Store) -> None:
    state = agent(last_seen=10.0)
    assert touch(state).is_touch
    await store.write([touch(state)])
    assert await store.get(state.instance_uid) == state


@pytest.mark.parametrize("make_write", [full, touch], ids=["full", "touch"])
async def test_older_write_is_dropped(store: Store, make_write: Callable[[AgentState], AgentWrite]) -> None:
    newer = agent(last_seen=20.0, sequence_num=9)
    older = replace(newer, last_seen=19.5, sequence_num=8, health=health(False))
    await store.write([full(newer)])
    await store.write([make_write(older)])
    assert await store.get(newer.instance_uid) == newer
    # Within one batch too.
    await store.write([full(replace(newer, last_seen=30.0)), make_write(replace(older, last_seen=29.0))])
    assert await store.get(newer.instance_uid) == replace(newer, last_seen=30.0)


async def test_two_nodes_committing_out_of_order(store_factory: StoreFactory) -> None:
    node_a, node_b = await store_factory(), await store_factory()
    first = agent(last_seen=10.0)
    await node_a.write([full(first)])
    # Node A handled the message at t=11, node B the next one at t=12, but B commits first.
    from_a = replace(heartbeat(first, 11.0), health=health(False))
    from_b = heartbeat(from_a, 12.0)
    await node_b.write([touch(from_b)])
    await node_a.write([full(from_a)])
    assert await node_a.get(first.instance_uid) == replace(from_b, health=first.health)
    assert await node_b.get(first.instance_uid) == replace(from_b, health=first.health)


# -- uid moves -------------------------------------------------------------------------------------


async def test_move_deletes_old_record_and_aliases_it(store: Store) -> None:
    old = agent(last_seen=10.0)
    new = new_uid()
    await store.write([full(old)])
    move = moved(old, new, 11.0)
    await store.write([move])
    assert await store.get(new) == move.state
    assert await store.get(old.instance_uid) == move.state
    assert await list_all(store) == [move.state]
    assert move.state.previous_instance_uids == (old.instance_uid,)


async def test_move_of_an_unknown_record_creates_it(store: Store) -> None:
    """A node may move an agent whose first write it has not committed yet."""
    old = agent(last_seen=10.0)
    move = moved(old, new_uid(), 10.0)
    await store.write([move])
    assert await store.get(old.instance_uid) == move.state
    assert await list_all(store) == [move.state]


async def test_alias_chains_resolve_to_the_latest_uid(store: Store) -> None:
    first = agent(last_seen=10.0)
    await store.write([full(first)])
    second = moved(first, new_uid(), 11.0)
    await store.write([second])
    third = moved(second.state, new_uid(), 12.0)
    await store.write([third])
    for uid in (first.instance_uid, second.state.instance_uid, third.state.instance_uid):
        assert await store.get(uid) == third.state
    assert await list_all(store) == [third.state]
    assert third.state.previous_instance_uids == (first.instance_uid, second.state.instance_uid)


async def test_late_write_for_a_moved_uid_does_not_resurrect_it(store_factory: StoreFactory) -> None:
    node_a, node_b = await store_factory(), await store_factory()
    old = agent(last_seen=10.0)
    await node_a.write([full(old)])
    move = moved(old, new_uid(), 11.0)
    await node_a.write([move])
    # Node B read the record before the move and commits a heartbeat for the old uid after it.
    await node_b.write([touch(heartbeat(old, 12.0))])
    await node_b.write([full(replace(old, last_seen=13.0))])
    assert await node_b.get(old.instance_uid) == move.state
    assert await list_all(node_b) == [move.state]


async def test_heartbeats_after_a_move_land_on_the_new_uid(store: Store) -> None:
    old = agent(last_seen=10.0)
    move = moved(old, new_uid(), 11.0)
    await store.write([full(old), move])
    beat = heartbeat(move.state, 12.0)
    await store.write([touch(beat)])
    assert await store.get(old.instance_uid) == beat
    assert await store.get(beat.instance_uid) == beat


# -- list_agents: status ---------------------------------------------------------------------------


def _status_fleet() -> dict[str, AgentState]:
    at = NOW - OFFLINE_AFTER  # exactly at the boundary: still online
    just_over = math.nextafter(at, -math.inf)
    return {
        "online": agent(last_seen=NOW - 1, healthy=True),
        "online_no_health": agent(last_seen=NOW - 1, healthy=None),
        "online_at_boundary": agent(last_seen=at, healthy=True),
        "unhealthy": agent(last_seen=NOW - 1, healthy=False),
        "unhealthy_at_boundary": agent(last_seen=at, healthy=False),
        "offline_just_over": agent(last_seen=just_over, healthy=True),
        "offline_and_unhealthy": agent(last_seen=NOW - 1000, healthy=False),
        "offline_no_health": agent(last_seen=NOW - 1000, healthy=None),
        "disconnected": agent(last_seen=NOW - 1, disconnected=True),
        "disconnected_long_ago": agent(last_seen=NOW - 1000, healthy=False, disconnected=True),
        "disconnected_unhealthy": agent(last_seen=NOW - 1, healthy=False, disconnected=True),
        "from_the_future": agent(last_seen=NOW + 50, healthy=True),
    }


EXPECTED_STATUS: dict[Status, set[str]] = {
    "online": {"online", "online_no_health", "online_at_boundary", "from_the_future"},
    "unhealthy": {"unhealthy", "unhealthy_at_boundary"},
    "offline": {"offline_just_over", "offline_and_unhealthy", "offline_no_health"},
    "disconnected": {"disconnected", "disconnected_long_ago", "disconnected_unhealthy"},
}


@pytest.mark.parametrize("status", STATUSES)
async def test_status_filter(store: Store, status: Status) -> None:
    fleet = _status_fleet()
    await store.write([full(s) for s in fleet.values()])
    expected = {fleet[name].instance_uid for name in EXPECTED_STATUS[status]}
    assert await uids(store, status=status) == expected
    oracle = {
        s.instance_uid
        for s in fleet.values()
        if derive_status(s, facts(s).healthy, NOW, OFFLINE_AFTER) == status
    }
    assert oracle == expected


@pytest.mark.parametrize("offline_after", [OFFLINE_AFTER, 299.9, 0.1])
async def test_status_filter_agrees_with_derive_status_near_the_boundary(
    store: Store, offline_after: float
) -> None:
    """Awkward floats on both sides of the cutoff. Some of these nows put `last_seen` where
    `now - last_seen > offline_after` and `last_seen < now - offline_after` disagree."""
    nows = [1_763_000_000.1859062, 1_000_000_000.1685942, 1.1700101551766398, 1_763_000_000.123456, 0.3]
    fleet: list[AgentState] = []
    for now in nows:
        for last_seen in (now - offline_after, now - offline_after * (1 + 1e-12)):
            for k in range(-3, 4):
                value = last_seen
                for _ in range(abs(k)):
                    value = math.nextafter(value, math.copysign(math.inf, k))
                fleet.append(agent(last_seen=value, healthy=k % 2 == 0))
    await store.write([full(s) for s in fleet])
    for now in nows:
        for status in STATUSES:
            oracle = {
                s.instance_uid
                for s in fleet
                if derive_status(s, facts(s).healthy, now, offline_after) == status
            }
            page = await store.list_agents(AgentQuery(status=status, limit=MAX_PAGE_SIZE), now, offline_after)
            assert {a.instance_uid for a in page.agents} == oracle, (now, status)
        summary = await store.summary(now, offline_after)
        assert summary.by_status == {
            status: sum(derive_status(s, facts(s).healthy, now, offline_after) == status for s in fleet)
            for status in STATUSES
        }


# -- list_agents: q and attributes -----------------------------------------------------------------


async def test_q_is_a_case_insensitive_substring(store: Store) -> None:
    web = agent(host_name="Web-Prod-01")
    db = agent(host_name="db-prod-02", service_name="OtelCol-Custom")
    await store.write([full(web), full(db)])
    assert await uids(store, q="web-PROD") == {web.instance_uid}
    assert await uids(store, q="PROD-0") == {web.instance_uid, db.instance_uid}
    assert await uids(store, q="otelcol-custom") == {db.instance_uid}
    assert await uids(store, q="nowhere") == set()
    # The uid is searchable too, in either case.
    assert await uids(store, q=web.uid[4:20].upper()) == {web.instance_uid}


async def test_q_treats_wildcards_literally(store: Store) -> None:
    percent = agent(host_name="cpu-100%-host")
    underscore = agent(host_name="db_1")
    backslash = agent(host_name="c:\\agents")
    plain = agent(host_name="db-1")
    await store.write([full(a) for a in (percent, underscore, backslash, plain)])
    assert await uids(store, q="%") == {percent.instance_uid}
    assert await uids(store, q="100%-") == {percent.instance_uid}
    assert await uids(store, q="_") == {underscore.instance_uid}
    assert await uids(store, q="db_") == {underscore.instance_uid}
    assert await uids(store, q="\\") == {backslash.instance_uid}
    assert await uids(store, q="c:\\a") == {backslash.instance_uid}


async def test_attribute_filters(store: Store) -> None:
    web = agent(
        last_seen=NOW,
        service_name="otelcol-contrib",
        host_name="web-1",
        identifying={"deployment.environment": "prod", "shard": 7},
        non_identifying={"gpu": True, "cpu.quota": 1.5, "we\"ird' key": "x"},
    )
    db = agent(
        service_name="otelcol-contrib",
        host_name="db-1",
        identifying={"deployment.environment": "staging", "shard": 8},
        non_identifying={"gpu": False},
    )
    other = agent(last_seen=NOW, service_name="fluent-bit", host_name="web-1", healthy=None)
    await store.write([full(a) for a in (web, db, other)])

    assert await uids(store, attributes={"service.name": "otelcol-contrib"}) == {
        web.instance_uid,
        db.instance_uid,
    }
    assert await uids(store, attributes={"host.name": "web-1"}) == {web.instance_uid, other.instance_uid}
    assert await uids(store, attributes={"service.name": "otelcol-contrib", "host.name": "web-1"}) == {
        web.instance_uid
    }
    assert await uids(store, attributes={"shard": "7"}) == {web.instance_uid}
    assert await uids(store, attributes={"gpu": "true"}) == {web.instance_uid}
    assert await uids(store, attributes={"gpu": "false"}) == {db.instance_uid}
    assert await uids(store, attributes={"cpu.quota": "1.5"}) == {web.instance_uid}
    assert await uids(store, attributes={"we\"ird' key": "x"}) == {web.instance_uid}
    # Exact matches only: no substrings, no case folding, no wildcards.
    assert await uids(store, attributes={"host.name": "web"}) == set()
    assert await uids(store, attributes={"host.name": "WEB-1"}) == set()
    assert await uids(store, attributes={"host.name": "web-%"}) == set()
    assert await uids(store, attributes={"no.such.key": "web-1"}) == set()
    # Combined with the other filters.
    assert await uids(store, attributes={"host.name": "web-1"}, q="fluent") == {other.instance_uid}
    assert await uids(store, attributes={"host.name": "web-1"}, status="online") == {
        web.instance_uid,
        other.instance_uid,
    }


async def test_identifying_attribute_wins_a_key_clash(store: Store) -> None:
    clash = agent(identifying={"env": "prod"}, non_identifying={"env": "dev"})
    await store.write([full(clash)])
    assert await uids(store, attributes={"env": "prod"}) == {clash.instance_uid}
    assert await uids(store, attributes={"env": "dev"}) == set()


async def test_filters_follow_updates(store: Store) -> None:
    state = agent(last_seen=NOW, host_name="before")
    await store.write([full(state)])
    await store.write(
        [full(replace(state, last_seen=NOW + 1, description=description({"host.name": "after"})))]
    )
    assert await uids(store, attributes={"host.name": "before"}) == set()
    assert await uids(store, q="before") == set()
    assert await uids(store, attributes={"host.name": "after"}) == {state.instance_uid}


# -- list_agents: pagination -----------------------------------------------------------------------


@pytest.mark.parametrize(("count", "limit"), [(23, 5), (20, 5), (7, 1), (3, 50), (0, 5)])
async def test_pagination_walks_every_agent_once_in_uid_order(store: Store, count: int, limit: int) -> None:
    fleet = [agent(last_seen=NOW) for _ in range(count)]
    await store.write([full(a) for a in fleet])
    seen: list[str] = []
    pages = 0
    cursor: str | None = None
    while True:
        page = await store.list_agents(AgentQuery(limit=limit, cursor=cursor), NOW, OFFLINE_AFTER)
        pages += 1
        assert len(page.agents) <= limit
        seen.extend(a.uid for a in page.agents)
        if page.next_cursor is None:
            break
        assert len(page.agents) == limit
        cursor = page.next_cursor
    assert seen == sorted(a.uid for a in fleet)
    assert pages == max(1, math.ceil(count / limit))


async def test_pagination_with_filters(store: Store) -> None:
    fleet = [agent(last_seen=NOW, healthy=i % 3 != 0) for i in range(30)]
    await store.write([full(a) for a in fleet])
    unhealthy = await list_all(store, AgentQuery(status="unhealthy", limit=3))
    assert [a.uid for a in unhealthy] == sorted(a.uid for a in fleet[::3])


async def test_pagination_is_stable_under_concurrent_writes(store: Store) -> None:
    fleet = [agent(uid_from_int(i * 10), last_seen=NOW) for i in range(1, 21)]
    await store.write([full(a) for a in fleet])
    seen: list[bytes] = []
    cursor: str | None = None
    step = 0
    while True:
        page = await store.list_agents(AgentQuery(limit=4, cursor=cursor), NOW, OFFLINE_AFTER)
        seen.extend(a.instance_uid for a in page.agents)
        if page.next_cursor is None:
            break
        cursor = page.next_cursor
        step += 1
        # Between pages: heartbeats for everyone, and a new agent before the cursor.
        await store.write([touch(heartbeat(a, NOW + step)) for a in fleet])
        await store.write([full(agent(uid_from_int(step * 10 - 5), last_seen=NOW))])
    originals = [a.instance_uid for a in fleet]
    assert [u for u in seen if u in set(originals)] == originals
    assert len(seen) == len(set(seen))


@pytest.mark.parametrize("limit", [0, -5])
async def test_limit_below_one_means_one(store: Store, limit: int) -> None:
    await store.write([full(agent()), full(agent())])
    page = await store.list_agents(AgentQuery(limit=limit), NOW, OFFLINE_AFTER)
    assert len(page.agents) == 1
    assert page.next_cursor is not None


async def test_limit_is_clamped_to_max_page_size(store: Store) -> None:
    fleet = [agent() for _ in range(MAX_PAGE_SIZE + 2)]
    await store.write([full(a) for a in fleet])
    page = await store.list_agents(AgentQuery(limit=MAX_PAGE_SIZE * 10), NOW, OFFLINE_AFTER)
    assert len(page.agents) == MAX_PAGE_SIZE
    assert page.next_cursor is not None
    rest = await store.list_agents(
        AgentQuery(limit=MAX_PAGE_SIZE, cursor=page.next_cursor), NOW, OFFLINE_AFTER
    )
    assert len(rest.agents) == 2
    assert rest.next_cursor is None


async def test_bad_cursor_is_rejected(store: Store) -> None:
    await store.write([full(agent()) for _ in range(3)])
    page = await store.list_agents(AgentQuery(limit=1), NOW, OFFLINE_AFTER)
    assert page.next_cursor is not None
    good = page.next_cursor
    bad = [
        "",
        "not a cursor",
        "!!!!",
        good[:-3],
        good + "A",
        good + "===",
        base64.urlsafe_b64encode(b"\x00" * 15).decode(),
        "AAAAAAAAAA",  # decodes, but to 7 bytes
        "../../etc/passwd",
        "' OR 1=1 --",
    ]
    for cursor in bad:
        with pytest.raises(InvalidCursor):
            await store.list_agents(AgentQuery(cursor=cursor), NOW, OFFLINE_AFTER)
    assert issubclass(InvalidCursor, ValueError)


# -- summary ---------------------------------------------------------------------------------------


async def test_summary_of_an_empty_fleet(store: Store) -> None:
    assert await store.summary(NOW, OFFLINE_AFTER) == FleetSummary(
        total=0, by_status=dict.fromkeys(STATUSES, 0), by_type_version={}, by_os={}
    )


async def test_summary_counts(store: Store) -> None:
    fleet = _status_fleet()
    extra = [
        agent(last_seen=NOW, service_name="otelcol-contrib", service_version="0.121.0", os_type="windows"),
        agent(last_seen=NOW, service_name="fluent-bit", service_version="", os_type=""),
        agent(last_seen=NOW, service_name="", service_version="1.0", os_type="darwin"),
        AgentState(instance_uid=new_uid(), enrolled_at=NOW, last_seen=NOW),  # no description yet
    ]
    await store.write([full(a) for a in (*fleet.values(), *extra)])
    summary = await store.summary(NOW, OFFLINE_AFTER)
    assert summary.total == len(fleet) + len(extra)
    assert summary.by_status == {
        "online": len(EXPECTED_STATUS["online"]) + len(extra),
        "unhealthy": len(EXPECTED_STATUS["unhealthy"]),
        "offline": len(EXPECTED_STATUS["offline"]),
        "disconnected": len(EXPECTED_STATUS["disconnected"]),
    }
    assert summary.by_type_version == {
        "otelcol-contrib": {"0.120.0": len(fleet), "0.121.0": 1},
        "fluent-bit": {"unknown": 1},
        "unknown": {"1.0": 1, "unknown": 1},
    }
    assert summary.by_os == {"linux": len(fleet), "windows": 1, "unknown": 2, "darwin": 1}
    assert sum(summary.by_status.values()) == summary.total


async def test_summary_uses_the_given_time(store: Store) -> None:
    await store.write([full(agent(last_seen=NOW)), full(agent(last_seen=NOW, healthy=False))])
    later = await store.summary(NOW + OFFLINE_AFTER + 1, OFFLINE_AFTER)
    assert later.by_status == {"online": 0, "unhealthy": 0, "offline": 2, "disconnected": 0}


async def test_ping(store: Store) -> None:
    await store.ping()


async def test_concurrent_gets_each_get_their_own_record(store: Store) -> None:
    import asyncio

    states = [agent(last_seen=float(n)) for n in range(1, 40)]
    await store.write([full(s) for s in states])
    mover = agent(last_seen=50.0)
    await store.write([full(mover)])
    move = moved(mover, new_uid(), last_seen=51.0)
    await store.write([move])
    target = move.state
    missing = new_uid()
    asked = [s.instance_uid for s in states] + [mover.instance_uid, missing, states[0].instance_uid]
    got = await asyncio.gather(*(store.get(uid) for uid in asked))
    assert got[: len(states)] == states
    assert got[len(states)] == target
    assert got[len(states) + 1] is None
    assert got[-1] == states[0]


async def test_pending_command_changes_only_when_a_write_names_it(store: Store) -> None:
    stored = agent(last_seen=10.0)
    await store.write([full(stored)])
    # An admin request on another node, from an older read of the record.
    request = replace(stored, pending_command=0)
    await store.write([AgentWrite(state=request, changed=frozenset({"pending_command"}))])
    assert (await store.get(stored.instance_uid)) == request
    # A later status write from the node holding the agent, from its cache without the command.
    status = replace(stored, last_seen=20.0, health=None)
    await store.write([full(status)])
    assert (await store.get(stored.instance_uid)) == replace(status, pending_command=0)
    # Delivery clears it.
    delivered = replace(status, last_seen=21.0, pending_command=None)
    await store.write([AgentWrite(state=delivered, changed=frozenset({"pending_command", "last_seen"}))])
    assert (await store.get(stored.instance_uid)) == delivered


async def test_a_command_id_travels_with_its_command_and_only_a_named_write_changes_either(
    store: Store,
) -> None:
    stored = agent(last_seen=10.0)
    await store.write([full(stored)])
    # Requested from an older read of the record (its last_seen is behind the stored one's).
    request = replace(stored, last_seen=5.0, pending_command=0, command_id="first")
    await store.write([AgentWrite(state=request, changed=frozenset({"pending_command"}))])
    got = await store.get(stored.instance_uid)
    assert got is not None and (got.last_seen, got.pending_command, got.command_id) == (10.0, 0, "first")
    # The same command asked again: a new id replaces the old one.
    again = replace(stored, pending_command=0, command_id="second")
    await store.write([AgentWrite(state=again, changed=frozenset({"pending_command"}))])
    # Writes of the holding node, from a cached record without any command, keep both.
    status = replace(stored, last_seen=20.0, health=None)
    await store.write([full(status)])
    await store.write([touch(replace(status, last_seen=21.0, sequence_num=status.sequence_num + 1))])
    got = await store.get(stored.instance_uid)
    assert got is not None and (got.pending_command, got.command_id) == (0, "second")
    # Delivery clears both.
    delivered = replace(status, last_seen=22.0, pending_command=None, command_id="")
    await store.write([AgentWrite(state=delivered, changed=frozenset({"pending_command", "last_seen"}))])
    assert (await store.get(stored.instance_uid)) == delivered


async def test_key_id_is_stored_and_changes_only_when_a_write_names_it(store_factory: StoreFactory) -> None:
    node_a, node_b = await store_factory(), await store_factory()
    enrolled = agent(last_seen=10.0, key_id="edge-eu")
    await node_a.write([full(enrolled)])
    assert (await node_b.get(enrolled.instance_uid)) == enrolled
    # An admin moves it to another key, from an older read of the record.
    rebound = replace(enrolled, last_seen=5.0, key_id="sha256:0123456789ab")
    await node_b.write([AgentWrite(state=rebound, changed=frozenset({"key_id"}))])
    got = await node_a.get(enrolled.instance_uid)
    assert got is not None and (got.last_seen, got.key_id) == (10.0, "sha256:0123456789ab")
    # Node A still holds its cached copy bound to the old key: its later writes keep the new binding.
    status = replace(enrolled, last_seen=20.0, health=None)
    await node_a.write([full(status)])
    await node_a.write([touch(replace(status, last_seen=21.0, sequence_num=status.sequence_num + 1))])
    got = await node_b.get(enrolled.instance_uid)
    assert got is not None and (got.last_seen, got.key_id) == (21.0, "sha256:0123456789ab")
    # Bound to no key again (an admin's null): "" round-trips.
    anonymous = replace(got, last_seen=22.0, key_id="")
    await node_b.write([AgentWrite(state=anonymous, changed=frozenset({"key_id", "last_seen"}))])
    assert (await node_a.get(enrolled.instance_uid)) == anonymous


async def test_a_moved_record_keeps_its_key_id(store: Store) -> None:
    stored = agent(last_seen=10.0, key_id="edge-eu")
    await store.write([full(stored)])
    new = new_uid()
    await store.write([moved(stored, new, 11.0)])
    got = await store.get(stored.instance_uid)
    assert got is not None and (got.instance_uid, got.key_id) == (new, "edge-eu")


async def test_key_id_filter(store: Store) -> None:
    eu, us, anonymous = agent(key_id="edge-eu"), agent(key_id="edge-us"), agent()
    await store.write([full(eu), full(us), full(anonymous)])

    async def bound_to(key_id: str) -> set[bytes]:
        query = AgentQuery(key_id=key_id, limit=MAX_PAGE_SIZE)
        return {a.instance_uid for a in await list_all(store, query)}

    assert await bound_to("edge-eu") == {eu.instance_uid}
    assert await bound_to("edge-us") == {us.instance_uid}
    assert await bound_to("") == {anonymous.instance_uid}
    assert await bound_to("nobody") == set()


# -- pending_commands ------------------------------------------------------------------------------


def _named(state: AgentState) -> AgentWrite:
    """The write of an admin request (or a delivery): it names pending_command."""
    return AgentWrite(state=state, changed=frozenset({"pending_command"}))


async def test_pending_commands_lists_set_commands_until_they_are_cleared(store: Store) -> None:
    waiting, other, idle = agent(last_seen=10.0), agent(last_seen=11.0), agent(last_seen=12.0)
    await store.write([full(waiting), full(other), full(idle)])
    assert await store.pending_commands(MAX_PENDING_COMMANDS) == {}
    # CommandType_Restart is 0: a command of 0 is listed, only None is "no command".
    await store.write(
        [_named(replace(waiting, pending_command=0)), _named(replace(other, pending_command=7))]
    )
    assert await store.pending_commands(MAX_PENDING_COMMANDS) == {
        waiting.instance_uid: 0,
        other.instance_uid: 7,
    }
    await store.write([_named(replace(waiting, last_seen=13.0, pending_command=None))])
    assert await store.pending_commands(MAX_PENDING_COMMANDS) == {other.instance_uid: 7}
    await store.write([_named(replace(other, pending_command=None))])
    assert await store.pending_commands(MAX_PENDING_COMMANDS) == {}


async def test_pending_commands_change_only_when_a_write_names_them(store_factory: StoreFactory) -> None:
    node_a, node_b = await store_factory(), await store_factory()
    stored = agent(last_seen=10.0)
    await node_a.write([full(stored)])
    # Node B stores a request; node A, holding the agent, writes from its cache without it: a full
    # write, a heartbeat, and a write older than the request.
    await node_b.write([_named(replace(stored, last_seen=9.0, pending_command=0))])
    await node_a.write([full(replace(stored, last_seen=20.0, health=None))])
    await node_a.write([touch(heartbeat(stored, 21.0))])
    await node_a.write([full(replace(stored, last_seen=15.0))])
    assert await node_a.pending_commands(10) == {stored.instance_uid: 0}
    assert await node_b.pending_commands(10) == {stored.instance_uid: 0}
    # A write that names it clears it, whatever its last_seen.
    await node_a.write([_named(replace(stored, last_seen=1.0, pending_command=None))])
    assert await node_b.pending_commands(10) == {}


async def test_pending_commands_are_keyed_by_the_uid_the_record_moved_to(store: Store) -> None:
    old = agent(last_seen=10.0)
    await store.write([full(old), _named(replace(old, pending_command=0))])
    move = moved(replace(old, pending_command=0), new_uid(), 11.0)
    await store.write([move])
    assert await store.pending_commands(10) == {move.state.instance_uid: 0}


async def test_pending_commands_limit_keeps_the_agents_seen_last(store: Store) -> None:
    fleet = [agent(last_seen=float(n), pending_command=n % 3) for n in (5, 1, 9, 3, 7, 2)]
    await store.write([full(a) for a in fleet])
    await store.write([_named(a) for a in fleet])
    newest = sorted(fleet, key=lambda a: a.last_seen, reverse=True)
    for limit in (0, 1, 4, 6, 50):
        expected = {a.instance_uid: a.pending_command for a in newest[:limit]}
        assert await store.pending_commands(limit) == expected, limit
    assert await store.pending_commands(-1) == {}
    # Past the bound it is clamped (Elasticsearch would refuse a page over 10,000 hits).
    assert len(await store.pending_commands(MAX_PENDING_COMMANDS * 10)) == len(fleet)
    # A heartbeat moves an agent up: it is connected, unlike the agents seen longest ago.
    await store.write([touch(heartbeat(newest[-1], 100.0))])
    assert set(await store.pending_commands(1)) == {newest[-1].instance_uid}
