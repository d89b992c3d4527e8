"""When a WebSocket agent's liveness (`last_seen`, `sequence_num`) reaches the store.

A heartbeat changes nothing but those two fields, and the connection that received it already keeps
the new record. Writing it through on every heartbeat was most of the store's work for a connected
fleet, and a `_bulk` per flush interval on Elasticsearch. So a plain heartbeat of an agent on this
node's sockets stays in memory, and reaches the store:

- with any write that matters (every other write carries the whole record, liveness included);
- from the node's sweep, every `offline_after / 10` seconds, for every held agent whose stored
  `last_seen` is `offline_after / 2` old or more: the whole node's due heartbeats in one batch, so
  the store's `last_seen` of a connected agent is never more than about 0.6 x `offline_after` old and
  it never shows offline;
- for an agent that reports capabilities without ReportsHeartbeat (it speaks only when it has
  something to say), the sweep counts its socket answering pings as a heartbeat at the sweep's time
  (`Holder.alive`), so it stays online while its socket is open;
- when its socket closes (goodbye, idle, drain, a dead peer), so the next node to get the agent reads
  its last sequence number and sees no gap; not when another connection took the agent over, which
  has written a newer record already (the stores also drop a write older than what they hold);
- when the node stops, before the writer's last flush.

What a crash of the node loses is at most that much liveness: the agent reconnects elsewhere, its
sequence number does not follow the stored one, and the engine asks once for its full state, which is
how OpAMP repairs lost state (design principle 2).

An HTTP agent has no socket to hold its record, and with several nodes its next poll may reach any
of them, which must find its last sequence number in the store: so every poll is written. But a node
that is the whole fleet (no bus, and no other gateway process has its SQLite file open: `alone`)
gets every poll back. There a plain heartbeat over HTTP is *held* by the writer (store/writer.py),
which answers the agent's next poll from it, and reaches the store by the same rules: with the
agent's next write that matters, from the sweep once the first heartbeat held is `offline_after / 2`
old, and when the node stops; and all at once as soon as another node opens the file. A crash loses
that much, repaired the same way: the first poll after the restart is asked for full state.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable

from gateway.fleet.agent import TOUCHED, AgentState, AgentWrite, uid_str
from gateway.node.registry import Registry
from gateway.opamp.heartbeat import heartbeats_expected
from gateway.periodic import Periodic
from gateway.store.writer import Writer, WriterFull, WriterStopped

logger = logging.getLogger("gateway.node.liveness")

# A held agent's stored last_seen is written again once it is this share of --offline-after old ...
PERSIST_AFTER = 0.5
# ... checked by a sweep this often (a share of --offline-after).
SWEEP_EVERY = 0.1
# While HTTP heartbeats are held, whether the node is still alone is checked this often (seconds).
ALONE_EVERY = 0.25


class Liveness:
    def __init__(
        self,
        registry: Registry,
        writer: Writer,
        *,
        offline_after: float,
        clock: Callable[[], float],
        alone: Callable[[], bool] | None = None,
    ) -> None:
        self._registry = registry
        self._writer = writer
        # Whether the node is the whole fleet now (no bus, no other gateway on its store): HTTP
        # heartbeats are held too. None: it never can be (a bus, or a store shared by design).
        self._alone = alone or _never
        self._clock = clock
        self._persist_after = offline_after * PERSIST_AFTER
        self._timer = Periodic("liveness-sweep", offline_after * SWEEP_EVERY, self._on_timer)
        self._watch = Periodic("alone-watch", ALONE_EVERY, self._on_watch)
        # uid -> last_seen of the last record of that agent handed to the writer by this node.
        self._stored: dict[bytes, float] = {}

    async def start(self) -> None:
        self._timer.start()
        if self._alone is not _never:
            self._watch.start()

    async def stop(self) -> None:
        """Hand every held agent's liveness to the writer (which flushes it as it stops)."""
        await self._watch.stop()
        await self._timer.stop()
        self.sweep(persist_after=0.0)
        self._writer.release_held(math.inf)

    def admit(self, write: AgentWrite) -> bool:
        """Whether `write` goes to the writer now (True, and it is noted as stored), or is a plain
        heartbeat whose liveness stays in memory until the sweep or the socket's close."""
        state = write.state
        uid = state.instance_uid
        if write.changed is TOUCHED or write.changed == TOUCHED:
            stored = self._stored.get(uid)
            if stored is not None and write.previous_uid is None:
                return False
        self._stored[uid] = state.last_seen
        if write.previous_uid is not None:
            self._stored.pop(write.previous_uid, None)
        return True

    def admit_http(self, write: AgentWrite) -> bool:
        """Whether an HTTP poll's `write` goes to the writer's queue now (True), or is a plain
        heartbeat the writer holds, on a node that is the whole fleet."""
        if not (write.changed is TOUCHED or write.changed == TOUCHED):
            return True
        if not self._alone():
            self._shared()
            return True
        return not self._writer.hold(write)

    def _shared(self) -> None:
        if self._writer.held:
            # Another node appeared: an agent's next poll may reach it, which reads the store.
            logger.info("another gateway opened the store: writing HTTP heartbeats from now on")
            self._writer.release_held(math.inf)

    async def _on_watch(self) -> None:
        # Between polls too: the newcomer may get an agent's next poll before this node gets any.
        if self._writer.held and not self._alone():
            self._shared()

    def fresher(self, state: AgentState | None) -> AgentState | None:
        """`state` as read from the store, with the newer liveness of a connection on this node that
        still holds the agent (it reconnected before that socket closed: no false sequence gap), or
        of the HTTP heartbeat the writer holds for it."""
        if state is None:
            return None
        holder = self._registry.get(state.instance_uid)
        held = holder.state(state.instance_uid) if holder is not None else None
        if held is None:
            # An HTTP agent's heartbeat the writer holds (a node that is the whole fleet).
            held = self._writer.held_state(state.instance_uid)
        if held is None or held.last_seen <= state.last_seen:
            return state
        return state.touched(held.last_seen, held.sequence_num)

    def release(self, state: AgentState, *, write: bool) -> None:
        """The agent's socket closed (`write`: hand its liveness to the writer if the store lacks it)."""
        stored = self._stored.pop(state.instance_uid, None)
        if write and stored is not None and state.last_seen > stored:
            self._submit(state, keep=False)

    def sweep(self, persist_after: float | None = None) -> int:
        """Hand the writer every held agent whose stored liveness is `persist_after` seconds old (the
        configured share of --offline-after by default), and the HTTP heartbeats it holds whose
        agent's first held one is as old; how many."""
        threshold = self._persist_after if persist_after is None else persist_after
        now = self._clock()
        held = self._writer.held
        due = self._writer.release_held(now - threshold if held and self._alone() else math.inf)
        stored = self._stored
        for uid, holder in self._registry.registrations():
            last = stored.get(uid)
            if last is None or now - last < threshold:
                continue
            state = holder.state(uid)
            if state is not None and not heartbeats_expected(state.capabilities) and state.last_seen >= last:
                # No heartbeats to wait for: its socket answering pings is its liveness. (A cached
                # record older than the stored one means a write of a newer one is in flight, whose
                # changes this touch must not overtake: the next sweep comes soon enough.)
                state = holder.alive(uid, now)
            if state is None or state.last_seen <= last or state.instance_uid != uid:
                continue
            if not self._submit(state):
                break
            due += 1
        return due

    async def _on_timer(self) -> None:
        due = self.sweep()
        if due:
            logger.debug("liveness of %d agents handed to the writer", due)

    def _submit(self, state: AgentState, *, keep: bool = True) -> bool:
        try:
            self._writer.submit(AgentWrite(state, TOUCHED))
        except (WriterFull, WriterStopped) as exc:
            # The next sweep (or the close) tries again; a full writer sheds messages anyway.
            logger.debug("liveness not written: %s", exc, extra={"instance_uid": uid_str(state.instance_uid)})
            return False
        if keep:
            self._stored[state.instance_uid] = state.last_seen
        return True


def _never() -> bool:
    return False
