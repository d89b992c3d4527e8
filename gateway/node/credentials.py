"""Per-agent credentials on one node: verifying them, caching their records, and acting on changes.

The records live in the store (gateway/fleet/credentials.py: digests only), so any node verifies any
agent's credential; this node keeps a copy of each record it needed, so that a heartbeat costs no
store read:

- A credential presented on the HTTP request or the WebSocket upgrade (`identify`) names its agent's
  uid; its record comes from the cache, or one store read on a miss (reads of one event-loop turn
  share a request). A credential the cached record does not accept is read through once more (at
  most once a second per uid): it may have been minted on another node a moment ago.
- Every message of an HTTP agent checks its uid's record (`get`, a dict lookup); a WebSocket is
  checked when it carries a uid for the first time, and again when the record changes.
- A change (`commit`: compare-and-set in the store) updates this node's copy and is broadcast
  (CredentialChanged); every other node drops its copy, and the node that holds the agent's socket
  checks it at once: refused now (revoked, or a credential replaced) -> closed with 1008; a rotation
  asked for -> the new credential is minted and pushed (gateway/opamp/credential_offers.py).
- While the bus is down no change can arrive: an HTTP agent's record older than STALE_WITHOUT_BUS is
  read again before its message is handled, and when the bus comes back every socket this node holds
  is checked against the store (`caught_up`), as configs are (gateway/node/config_cache.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import replace

from gateway.bus.base import Bus, BusUnavailable, CredentialChanged, Envelope
from gateway.fleet import credentials
from gateway.fleet.agent import uid_str
from gateway.fleet.credentials import AgentCredential, Minted, OwnCredential
from gateway.metrics import Metrics
from gateway.node.config_cache import STALE_WITHOUT_BUS
from gateway.node.push import MISSING, Missing, push_config
from gateway.node.registry import Holder, Registry
from gateway.opamp import capabilities as caps
from gateway.opamp.engine import FleetView
from gateway.store.base import Store, StoreError, StoreUnavailable

logger = logging.getLogger("gateway.node.credentials")

# Records this node keeps; past it the oldest tenth is dropped (each costs a store read later).
CACHE_LIMIT = 1 << 20
# A credential the cached record refuses is read through at most this often per uid.
REREAD_SECONDS = 1.0
# A copy older than this is read again before an HTTP message or a new socket relies on it: records
# deleted by --forget-after are not announced on the bus.
MAX_AGE_SECONDS = 600.0
# Compare-and-set attempts of an admin change before it answers 503.
_ATTEMPTS = 5
# uids per store read when the bus comes back.
_CHUNK = 500


class NotOffered(Exception):
    """A rotation that cannot be done: the message says why (per-agent credentials are off, or the
    agent does not accept opamp connection settings)."""


class AgentCredentials:
    def __init__(
        self,
        store: Store,
        bus: Bus,
        registry: Registry,
        metrics: Metrics,
        *,
        fleet: Callable[[], FleetView],
        clock: Callable[[], float] = time.time,
        mint: Callable[[bytes], Minted] = credentials.mint,
        cache_limit: int = CACHE_LIMIT,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._bus = bus
        self._registry = registry
        self._metrics = metrics
        self._fleet = fleet
        self._clock = clock
        self.mint = mint
        self._limit = cache_limit
        # The clock of the copies' ages.
        self._monotonic = monotonic
        # uid -> (record or None, self._monotonic() of the read)
        self._entries: dict[bytes, tuple[AgentCredential | None, float]] = {}
        # Reads of this event-loop turn, and those in flight; a change while one is in flight spoils
        # its answer for the cache.
        self._queued: dict[bytes, asyncio.Future[AgentCredential | None]] = {}
        self._in_flight: set[bytes] = set()
        self._spoiled: set[bytes] = set()
        self._batches: set[asyncio.Task[None]] = set()
        self._reread_at: dict[bytes, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # -- the cache ---------------------------------------------------------------------------------

    def peek(self, uid: bytes) -> AgentCredential | None | Missing:
        """The cached record of `uid` however old (a WebSocket's messages rely on the check at its
        connection and on change events), or MISSING."""
        entry = self._entries.get(uid)
        return MISSING if entry is None else entry[0]

    async def get(self, uid: bytes) -> AgentCredential | None:
        """The record of `uid`: cached, unless the bus is down and the copy is older than
        STALE_WITHOUT_BUS (or it is older than MAX_AGE_SECONDS); else read from the store (StoreError
        if it cannot be)."""
        record = self.fresh(uid)
        return await self.read(uid) if isinstance(record, Missing) else record

    def fresh(self, uid: bytes) -> AgentCredential | None | Missing:
        """The record of `uid` as get() gives it, if that needs no store read; else MISSING."""
        entry = self._entries.get(uid)
        if entry is not None:
            age = self._monotonic() - entry[1]
            if age < STALE_WITHOUT_BUS or (self._bus.up and age < MAX_AGE_SECONDS):
                return entry[0]
        return MISSING

    async def read(self, uid: bytes) -> AgentCredential | None:
        """The record of `uid` read from the store now (and cached)."""
        loop = asyncio.get_running_loop()
        future = self._queued.get(uid)
        if future is None:
            future = loop.create_future()
            if not self._queued:
                task = loop.create_task(self._read_batch())
                self._batches.add(task)
                task.add_done_callback(self._batches.discard)
            self._queued[uid] = future
        return await asyncio.shield(future)

    async def _read_batch(self) -> None:
        await asyncio.sleep(0)  # let the rest of this turn's callers join the batch
        batch, self._queued = self._queued, {}
        uids = list(batch)
        self._in_flight.update(uids)
        try:
            found = await self._store.get_credentials(uids)
        except Exception as exc:
            for future in batch.values():
                if not future.done():
                    future.set_exception(exc)
                    # Retrieved here, so that a caller that went away leaves no warning behind.
                    future.exception()
            return
        finally:
            self._in_flight.difference_update(uids)
        now = self._monotonic()
        for uid, future in batch.items():
            record = found.get(uid)
            if uid in self._spoiled:
                self._spoiled.discard(uid)
            else:
                self._put(uid, record, now)
            if not future.done():
                future.set_result(record)

    def _put(self, uid: bytes, record: AgentCredential | None, now: float) -> None:
        self._entries.pop(uid, None)
        self._entries[uid] = (record, now)
        if len(self._entries) > self._limit:
            for old in list(self._entries)[: max(1, self._limit // 10)]:
                del self._entries[old]

    def invalidate(self, uid: bytes) -> None:
        """Drop the copy of `uid` (its record changed elsewhere)."""
        self._entries.pop(uid, None)
        if uid in self._in_flight or uid in self._queued:
            self._spoiled.add(uid)

    def clear(self) -> None:
        self._entries.clear()
        self._spoiled.update(self._in_flight, self._queued)

    # -- verifying ---------------------------------------------------------------------------------

    async def identify(self, token: str) -> OwnCredential | None:
        """The agent credential `token` is, if it is one that is accepted now (never logged).
        StoreError when its record cannot be read."""
        own = credentials.parse(token)
        if own is None:
            return None
        cached = self._entries.get(own.uid)
        record = await self.get(own.uid)
        if record is not None and record.accepts(own.digest):
            return own
        now = self._monotonic()
        if cached is not None and now - self._reread_at.get(own.uid, -REREAD_SECONDS) >= REREAD_SECONDS:
            # Perhaps minted on another node a moment ago, its change event still on the way.
            if len(self._reread_at) > self._limit:
                self._reread_at.clear()
            self._reread_at[own.uid] = now
            record = await self.read(own.uid)
            if record is not None and record.accepts(own.digest):
                return own
        return None

    # -- changes -----------------------------------------------------------------------------------

    async def commit(self, uid: bytes, expected: AgentCredential | None, new: AgentCredential | None) -> bool:
        """Compare-and-set the record of `uid` (see Store.put_credential), keep it here, check the
        socket this node holds for it, and tell every other node. False if the stored record was not
        `expected` (its copy here is dropped). StoreError when the store cannot be written."""
        if not await self._store.put_credential(uid, expected, new):
            self.invalidate(uid)
            return False
        self.invalidate(uid)
        self._put(uid, new, self._monotonic())
        self._count(expected, new)
        holder = self._registry.get(uid)
        if holder is not None:
            # E.g. the agent connected with its new credential: the socket of the old one goes.
            await self.check(uid, holder, new)
        await self._announce(uid)
        return True

    def _count(self, before: AgentCredential | None, after: AgentCredential | None) -> None:
        if after is None:
            return
        if after.pending is not None and (before is None or before.pending != after.pending):
            self._metrics.credential_event("minted")
        if after.active is not None and (before is None or before.active != after.active):
            self._metrics.credential_event("activated")

    async def _announce(self, uid: bytes) -> None:
        try:
            await self._bus.broadcast(CredentialChanged(uid=uid))
            self._metrics.bus_events.labels(direction="sent", event="CredentialChanged").inc()
        except BusUnavailable as exc:
            # Other nodes read it again when their bus is back (caught_up), or past STALE_WITHOUT_BUS.
            logger.warning(
                "bus unavailable, other nodes learn of the credential change later: %s",
                exc,
                extra={"instance_uid": uid_str(uid)},
            )

    async def on_event(self, envelope: Envelope) -> None:
        """CredentialChanged from another node (this node acted on its own changes already)."""
        event = envelope.event
        if not isinstance(event, CredentialChanged) or envelope.source == self._bus.node_id:
            return
        self.invalidate(event.uid)
        holder = self._registry.get(event.uid)
        if holder is not None:
            await self.check(event.uid, holder)

    async def check(
        self, uid: bytes, holder: Holder, record: AgentCredential | None | Missing = MISSING
    ) -> None:
        """Check the socket holding `uid` against its record (read now unless given): refuse it, or
        push a new credential if one is due."""
        if isinstance(record, Missing):
            try:
                record = await self.read(uid)
            except StoreError as exc:
                logger.warning(
                    "cannot read a changed credential record (the socket is checked again when it "
                    "reconnects): %s",
                    exc,
                    extra={"instance_uid": uid_str(uid)},
                )
                return
        why = credentials.refusal(record, holder.own, uid, holder.authenticated)
        if why:
            self._metrics.credential_event("refused")
            logger.warning(
                "closing a socket whose credentials are no longer accepted: %s",
                why,
                extra={"instance_uid": uid_str(uid)},
            )
            await holder.refuse(uid, why)
            return
        if record is not None and record.rotate:
            await self.push(uid, holder)

    async def push(self, uid: bytes, holder: Holder) -> bool:
        """Push the agent its connection settings offer if one is due (a new credential minted and
        stored first); False if nothing was sent."""
        return await push_config(holder, uid, self._fleet(), self._clock(), self)

    async def caught_up(self) -> None:
        """After the bus (re)connects: changes made meanwhile were not heard of, so every copy goes,
        and every socket this node holds is checked against the store."""
        self.clear()
        registrations = self._registry.registrations()
        for start in range(0, len(registrations), _CHUNK):
            chunk = registrations[start : start + _CHUNK]
            try:
                found = await self._store.get_credentials([uid for uid, _ in chunk])
            except StoreError as exc:
                logger.warning("cannot check the held sockets' credentials after the bus came back: %s", exc)
                return
            now = self._monotonic()
            for uid, holder in chunk:
                record = found.get(uid)
                self._put(uid, record, now)
                await self.check(uid, holder, record)

    # -- the admin API -----------------------------------------------------------------------------

    async def rotate(self, uid: bytes, capabilities: int) -> AgentCredential | None:
        """Ask for a new credential for the agent (`capabilities`: its last reported ones): minted and
        offered at once when this node (or, told over the bus, another) holds its socket, else at its
        next message. The old one stays accepted until the new one is used (or reported applied).
        A revoked agent is let back on shared keys: its next message with an agent key gets a new
        credential. NotOffered when per-agent credentials are off or the agent cannot take one."""
        settings = self._fleet().settings
        if not settings.credential_endpoint:
            raise NotOffered(
                "per-agent credentials are off on this node: start it with --agent-credentials per-agent "
                "and --public-opamp-url"
            )

        def rotated(current: AgentCredential | None) -> AgentCredential | None:
            if current is not None and current.revoked:
                return None
            on_own = current is not None and current.active is not None
            if not on_own and not capabilities & caps.ACCEPTS_OPAMP_CONNECTION_SETTINGS:
                raise NotOffered(
                    "the agent does not accept opamp connection settings "
                    "(AcceptsOpAMPConnectionSettings): it stays on its shared agent key"
                )
            return replace(current or AgentCredential(), rotate=True, updated_at=self._clock())

        record = await self._change(uid, rotated)
        self._metrics.credential_event("rotation_requested")
        logger.info("new agent credential asked for", extra={"instance_uid": uid_str(uid)})
        return record

    async def revoke(self, uid: bytes) -> AgentCredential | None:
        """Refuse everything for the agent's uid, its own credentials and shared keys, from its next
        message on; its socket, on any node, is closed at once."""

        def revoked(current: AgentCredential | None) -> AgentCredential | None:
            if current is not None and current.revoked:
                return current
            return AgentCredential(revoked=True, updated_at=self._clock())

        record = await self._change(uid, revoked)
        self._metrics.credential_event("revoked")
        logger.warning("agent credentials revoked", extra={"instance_uid": uid_str(uid)})
        return record

    async def _change(
        self, uid: bytes, change: Callable[[AgentCredential | None], AgentCredential | None]
    ) -> AgentCredential | None:
        for _ in range(_ATTEMPTS):
            current = await self.read(uid)
            new = change(current)
            if new == current or await self.commit(uid, current, new):
                return new
        raise StoreUnavailable(f"the credential record of agent {uid_str(uid)} kept changing")

    async def forgotten(self, uid: bytes) -> None:
        """The agent's record was deleted (DELETE /api/v1/agents/{uid}): every node drops its copy, so
        the uid may enroll again with an agent key."""
        self.invalidate(uid)
        await self._announce(uid)
