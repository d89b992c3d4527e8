"""When a WebSocket agent's liveness reaches the store (gateway/node/liveness.py): a plain heartbeat
stays in memory; the sweep hands the writer every held agent whose stored liveness is old enough,
with the connection's newest record; a closing socket hands over what the store lacks, unless
another connection took the agent over."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, cast

import pytest

from gateway.fleet.agent import TOUCHED, AgentState, AgentWrite
from gateway.node.liveness import Liveness
from gateway.node.registry import Holder, Registry
from gateway.opamp import capabilities as caps
from gateway.store.writer import Writer
from tests.support.memory_store import MemoryStore
from tests.support.waiting import uid

pytestmark = pytest.mark.anyio

OFFLINE_AFTER = 100.0


class _Conn:
    """A connection holding records, as Connection.state offers them."""

    epoch = "e"

    def __init__(self) -> None:
        self.states: dict[bytes, AgentState] = {}

    def state(self, key: bytes) -> AgentState | None:
        return self.states.get(key)

    def alive(self, key: bytes, now: float) -> AgentState | None:
        state = self.states.get(key)
        if state is None:
            return None
        self.states[key] = state = state.touched(now, state.sequence_num)
        return state


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _record(n: int, last_seen: float, seq: int) -> AgentState:
    return AgentState(instance_uid=uid(n), enrolled_at=0.0, last_seen=last_seen, sequence_num=seq)


@pytest.fixture
def parts() -> tuple[Liveness, Registry, Writer, _Clock, _Conn]:
    registry, clock, conn = Registry(), _Clock(), _Conn()
    writer = Writer(MemoryStore())
    liveness = Liveness(registry, writer, offline_after=OFFLINE_AFTER, clock=clock)
    return liveness, registry, writer, clock, conn


def _hold(registry: Registry, conn: _Conn, state: AgentState) -> None:
    conn.states[state.instance_uid] = state
    registry.register(state.instance_uid, cast(Holder, conn))


def _pending(writer: Writer) -> dict[bytes, AgentWrite]:
    pending: dict[bytes, AgentWrite] = cast(Any, writer)._pending
    return pending


async def test_a_heartbeat_after_a_stored_write_stays_in_memory(parts: Any) -> None:
    liveness, *_ = parts
    first = _record(1, 1000.0, 0)
    # A first write (enrollment, or anything but a touch) goes through and is noted.
    assert liveness.admit(AgentWrite(first, frozenset({"enrolled", "last_seen"})))
    assert not liveness.admit(AgentWrite(first.touched(1030.0, 1), TOUCHED))
    # An equal set built by the engine's full rules is a heartbeat too.
    assert not liveness.admit(AgentWrite(first.touched(1060.0, 2), frozenset({"last_seen", "sequence_num"})))
    # A change that matters goes through, liveness included.
    assert liveness.admit(AgentWrite(first.touched(1090.0, 3), frozenset({"health", "last_seen"})))
    # An agent this node never wrote for: its first heartbeat is written (the store may lack it).
    assert liveness.admit(AgentWrite(_record(2, 1000.0, 7), TOUCHED))


async def test_the_sweep_writes_only_liveness_old_enough_with_the_newest_record(parts: Any) -> None:
    liveness, registry, writer, clock, conn = parts
    old, recent, quiet = _record(1, 1000.0, 0), _record(2, 1000.0, 0), _record(3, 1000.0, 0)
    liveness.admit(AgentWrite(old, frozenset({"enrolled"})))
    clock.now = 1040.0
    liveness.admit(AgentWrite(recent.touched(1040.0, 1), frozenset({"health"})))
    liveness.admit(AgentWrite(quiet, frozenset({"enrolled"})))
    _hold(registry, conn, old.touched(1055.0, 2))
    _hold(registry, conn, recent.touched(1055.0, 2))
    # The quiet agent sent nothing since its stored write: nothing to write whatever its age.
    _hold(registry, conn, quiet)
    clock.now = 1049.0
    assert liveness.sweep() == 0
    clock.now = 1056.0  # old's stored liveness is 56 s old (>= offline_after / 2), recent's 16 s
    assert liveness.sweep() == 1
    (write,) = _pending(writer).values()
    assert write.changed == TOUCHED and write.state == old.touched(1055.0, 2)
    # Handed over once: the next sweep finds nothing newer.
    assert liveness.sweep() == 0
    # On stop, everything newer than the store is handed over.
    assert liveness.sweep(persist_after=0.0) == 1
    assert _pending(writer)[uid(2)].state.sequence_num == 2


async def test_a_closing_socket_writes_what_the_store_lacks_unless_displaced(parts: Any) -> None:
    liveness, _registry, writer, _clock, _conn = parts
    first, second = _record(1, 1000.0, 0), _record(2, 1000.0, 0)
    for state in (first, second):
        liveness.admit(AgentWrite(state, frozenset({"enrolled"})))
    liveness.release(first.touched(1030.0, 1), write=True)
    liveness.release(second.touched(1030.0, 1), write=False)
    assert list(_pending(writer)) == [uid(1)]
    assert _pending(writer)[uid(1)].state.sequence_num == 1
    # Nothing newer than the store: nothing to write.
    third = _record(3, 1000.0, 0)
    liveness.admit(AgentWrite(third, frozenset({"enrolled"})))
    liveness.release(third, write=True)
    assert uid(3) not in _pending(writer)


async def test_a_record_read_from_the_store_gets_the_liveness_this_node_holds(parts: Any) -> None:
    liveness, registry, _writer, _clock, conn = parts
    stored = _record(1, 1000.0, 4)
    assert liveness.fresher(stored) is stored
    _hold(registry, conn, stored.touched(1090.0, 7))
    merged = liveness.fresher(stored)
    assert merged == stored.touched(1090.0, 7)
    assert liveness.fresher(None) is None


async def test_a_held_agent_without_heartbeats_is_alive_while_its_socket_is(parts: Any) -> None:
    """An agent that reports capabilities without ReportsHeartbeat speaks only when it has something
    to say: the sweep counts its open socket (which answers pings) as liveness at the sweep's time.
    One that reports heartbeats (or no capabilities) is written only when a message came."""
    liveness, registry, writer, clock, conn = parts
    silent = replace(_record(1, 1000.0, 3), capabilities=caps.REPORTS_STATUS)
    beating = replace(_record(2, 1000.0, 3), capabilities=caps.REPORTS_STATUS | caps.REPORTS_HEARTBEAT)
    for state in (silent, beating):
        liveness.admit(AgentWrite(state, frozenset({"enrolled"})))
        _hold(registry, conn, state)
    clock.now = 1049.0
    assert liveness.sweep() == 0
    assert conn.states[uid(1)] == silent
    clock.now = 1060.0
    assert liveness.sweep() == 1
    (write,) = _pending(writer).values()
    assert write.state == silent.touched(1060.0, 3) and write.changed == TOUCHED
    # The connection keeps the newer record, so its later writes are not older than the store's.
    assert conn.states[uid(1)] == silent.touched(1060.0, 3)
    assert conn.states[uid(2)] == beating
    # Not again until its stored liveness is old enough once more.
    clock.now = 1100.0
    assert liveness.sweep() == 0
    clock.now = 1111.0
    assert liveness.sweep() == 1
    assert _pending(writer)[uid(1)].state.last_seen == 1111.0


async def test_no_touch_overtakes_a_write_in_flight(parts: Any) -> None:
    """A message whose write must be committed before the reply is admitted (noted as stored) before
    the connection caches its record: until then the cached record is older than the stored one,
    and a touch built from it would carry the old record over the new one in the writer."""
    liveness, registry, writer, clock, conn = parts
    silent = replace(_record(1, 1000.0, 3), capabilities=caps.REPORTS_STATUS)
    liveness.admit(AgentWrite(silent, frozenset({"enrolled"})))
    _hold(registry, conn, silent)
    newer = replace(silent.touched(1040.0, 4), health=b"new")
    assert liveness.admit(AgentWrite(newer, frozenset({"health", "last_seen", "sequence_num"})))
    clock.now = 1100.0
    assert liveness.sweep() == 0
    assert conn.states[uid(1)] == silent
    # Once the connection keeps the new record, the sweep touches that one.
    conn.states[uid(1)] = newer
    assert liveness.sweep() == 1
    assert _pending(writer)[uid(1)].state == newer.touched(1100.0, 4)


async def test_http_heartbeats_are_held_only_on_a_node_that_is_the_whole_fleet(parts: Any) -> None:
    liveness, _, writer, clock, _ = parts
    first = _record(1, 1000.0, 0)
    # With a bus (several nodes), every poll is written: the next may reach another node.
    assert liveness.admit_http(AgentWrite(first.touched(1030.0, 1), TOUCHED))
    others: list[str] = []
    alone = Liveness(Registry(), writer, offline_after=OFFLINE_AFTER, clock=clock, alone=lambda: not others)
    assert not alone.admit_http(AgentWrite(first.touched(1060.0, 2), TOUCHED))
    assert writer.held == 1
    # A change that matters goes to the queue, and takes the held heartbeat with it.
    assert alone.admit_http(AgentWrite(first.touched(1090.0, 3), frozenset({"health", "last_seen"})))
    writer.submit(AgentWrite(first.touched(1090.0, 3), frozenset({"health", "last_seen"})))
    assert writer.held == 0
    assert _pending(writer)[uid(1)].changed >= TOUCHED | {"health"}
    # Another node opens the store: what is held goes to the writer at once, and nothing more is held.
    second = _record(2, 1000.0, 0)
    assert not alone.admit_http(AgentWrite(second.touched(1100.0, 1), TOUCHED))
    others.append("node-b")
    assert alone.admit_http(AgentWrite(second.touched(1130.0, 2), TOUCHED))
    assert writer.held == 0 and _pending(writer)[uid(2)].state.sequence_num == 1


async def test_the_sweep_and_the_stop_hand_held_http_heartbeats_to_the_writer() -> None:
    writer, clock = Writer(MemoryStore()), _Clock()
    others: list[str] = []
    liveness = Liveness(
        Registry(), writer, offline_after=OFFLINE_AFTER, clock=clock, alone=lambda: not others
    )
    old, new = _record(1, 1000.0, 0), _record(2, 1000.0, 0)
    assert not liveness.admit_http(AgentWrite(old.touched(1010.0, 1), TOUCHED))
    assert not liveness.admit_http(AgentWrite(old.touched(1040.0, 2), TOUCHED))
    assert not liveness.admit_http(AgentWrite(new.touched(1030.0, 1), TOUCHED))
    # Listings read from the store show the liveness held.
    assert liveness.fresher(new) == new.touched(1030.0, 1)
    clock.now = 1059.0
    assert liveness.sweep() == 0
    # The first heartbeat held for `old` is offline_after / 2 old: its newest goes to the writer.
    clock.now = 1060.0
    assert liveness.sweep() == 1
    assert _pending(writer)[uid(1)].state.sequence_num == 2 and writer.held == 1
    # A sweep that finds another node on the store hands over everything held.
    others.append("node-b")
    assert liveness.sweep() == 1 and writer.held == 0
    # Alone again: held again (an agent with no write queued).
    others.clear()
    assert not liveness.admit_http(AgentWrite(_record(3, 1000.0, 0).touched(1070.0, 1), TOUCHED))
    await liveness.stop()
    assert set(_pending(writer)) == {uid(1), uid(2), uid(3)} and writer.held == 0
