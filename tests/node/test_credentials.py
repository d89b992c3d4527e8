"""A node's per-agent credentials (gateway/node/credentials.py): the cache that spares a heartbeat its
store read, what invalidates it (bus events, the bus being down, age), identifying a credential
(a reread for one minted elsewhere, at most once a second), and acting on changes: a refused
socket is refused, a rotation is minted, stored and pushed, a revocation announced to every node."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import pytest

from gateway.bus.base import CredentialChanged, Envelope
from gateway.bus.local import LocalBus, LocalHub
from gateway.fleet import credentials
from gateway.fleet.agent import AgentState, AgentWrite
from gateway.fleet.credentials import AgentCredential, OwnCredential
from gateway.metrics import Metrics
from gateway.node import credentials as node_credentials
from gateway.node.config_cache import STALE_WITHOUT_BUS
from gateway.node.credentials import AgentCredentials, NotOffered
from gateway.node.push import MISSING
from gateway.node.registry import Registry
from gateway.opamp import capabilities as caps, heartbeat
from gateway.opamp.connection_offers import SettingsSet
from gateway.opamp.engine import FleetView
from gateway.opamp.push import Push
from gateway.store.base import StoreUnavailable
from tests.support.memory_store import MemoryStore
from tests.support.waiting import eventually, uid

pytestmark = pytest.mark.anyio

UID = uid(1)
NOW = 1_700_000_000.0
ENDPOINT = "wss://opamp.example.com/v1/opamp"
CAPS = caps.REPORTS_STATUS | caps.ACCEPTS_OPAMP_CONNECTION_SETTINGS | caps.REPORTS_HEARTBEAT
FLEET = FleetView(
    server_capabilities=caps.server_capabilities(True),
    settings=SettingsSet(heartbeat_offer=heartbeat.settings_offer(30), credential_endpoint=ENDPOINT),
)
SHARED_FLEET = FleetView(settings=SettingsSet(heartbeat_offer=heartbeat.settings_offer(30)))
TOKEN = credentials.mint(UID).token
ACTIVE = AgentCredential(active=credentials.digest_of(TOKEN), opamp_hash=b"\x01" * 32)


@dataclass(eq=False)
class Socket:
    """A held socket: what it authenticated with, what it was told."""

    own: OwnCredential | None = None
    authenticated: bool = True
    epoch: str = "e"
    refused: list[str] = field(default_factory=list)
    pushed: list[Push] = field(default_factory=list)

    def state(self, uid: bytes) -> AgentState:
        return AgentState(instance_uid=uid, enrolled_at=NOW, last_seen=NOW, capabilities=CAPS)

    def alive(self, uid: bytes, now: float) -> AgentState | None:
        return None

    async def send(self, push: Push) -> bool:
        self.pushed.append(push)
        return True

    async def answers(self, recent: float, within: float) -> bool:
        return True

    async def taken_over(self, uid: bytes, where: str) -> None:
        raise AssertionError("no takeover here")

    async def drain(self, retry_after: float) -> None:
        raise AssertionError("no drain here")

    async def refuse(self, uid: bytes, reason: str) -> None:
        self.refused.append(reason)


class DownBus(LocalBus):
    @property
    def up(self) -> bool:
        return False


async def _store(*uids: bytes) -> MemoryStore:
    store = MemoryStore()
    await store.write(
        [
            AgentWrite(
                AgentState(instance_uid=u, enrolled_at=NOW, last_seen=NOW, capabilities=CAPS), frozenset()
            )
            for u in uids
        ]
    )
    return store


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _node(
    store: MemoryStore,
    *,
    bus: LocalBus | None = None,
    registry: Registry | None = None,
    fleet: FleetView = FLEET,
    clock: Clock | None = None,
) -> AgentCredentials:
    return AgentCredentials(
        store,
        bus or LocalBus("node-a"),
        registry or Registry(),
        Metrics(),
        fleet=lambda: fleet,
        clock=lambda: NOW,
        monotonic=clock or Clock(),
    )


async def test_a_heartbeat_reads_the_record_once() -> None:
    store = await _store(UID)
    store.credentials[UID] = ACTIVE
    node = _node(store)
    assert node.peek(UID) is MISSING
    for _ in range(100):
        assert await node.get(UID) == ACTIVE
    assert store.credential_reads == 1
    assert node.peek(UID) == ACTIVE
    # An agent without one is cached as such too.
    other = uid(2)
    assert await node.get(other) is None and await node.get(other) is None
    assert store.credential_reads == 2 and node.peek(other) is None


async def test_reads_of_one_turn_share_one_request() -> None:
    store = await _store(UID)
    node = _node(store)
    await asyncio.gather(*(node.get(uid(n)) for n in range(20)), node.get(UID))
    assert store.credential_reads == 1


async def test_an_event_from_another_node_drops_the_copy_and_its_own_are_ignored() -> None:
    store = await _store(UID)
    node = _node(store)
    assert await node.get(UID) is None
    store.credentials[UID] = ACTIVE
    await node.on_event(Envelope(CredentialChanged(UID), source="node-a", sent_at=0.0))
    assert await node.get(UID) is None  # its own event: already known
    await node.on_event(Envelope(CredentialChanged(UID), source="node-b", sent_at=0.0))
    assert node.peek(UID) is MISSING
    assert await node.get(UID) == ACTIVE


async def test_with_the_bus_down_a_copy_lives_a_second() -> None:
    store = await _store(UID)
    clock = Clock()
    node = _node(store, bus=DownBus("node-a"), clock=clock)
    await node.get(UID)
    await node.get(UID)
    assert store.credential_reads == 1
    clock.now += STALE_WITHOUT_BUS
    await node.get(UID)
    assert store.credential_reads == 2


async def test_an_old_copy_is_read_again_even_with_the_bus_up() -> None:
    store = await _store(UID)
    clock = Clock()
    node = _node(store, clock=clock)
    await node.get(UID)
    clock.now += node_credentials.MAX_AGE_SECONDS
    await node.get(UID)
    assert store.credential_reads == 2
    # A socket's messages rely on what it was checked with: peek keeps any copy.
    assert node.peek(UID) is None


async def test_a_change_while_a_read_is_in_flight_is_not_cached_over() -> None:
    store = await _store(UID)
    node = _node(store)
    reading = asyncio.create_task(node.get(UID))
    await asyncio.sleep(0)
    node.invalidate(UID)  # queued, not yet answered: its answer is not kept
    assert await reading is None
    assert node.peek(UID) is MISSING
    assert await node.get(UID) is None and node.peek(UID) is None


async def test_identify_accepts_only_accepted_credentials_and_rereads_rarely() -> None:
    store = await _store(UID)
    clock = Clock()
    node = _node(store, clock=clock)
    assert await node.identify("agent-key") is None
    assert await node.identify(TOKEN) is None  # no record yet: cached as none
    reads = store.credential_reads
    # Minted elsewhere a moment ago, the event still on its way: one reread finds it.
    store.credentials[UID] = AgentCredential(pending=credentials.digest_of(TOKEN))
    clock.now += node_credentials.REREAD_SECONDS
    assert await node.identify(TOKEN) == OwnCredential(UID, credentials.digest_of(TOKEN))
    assert store.credential_reads == reads + 1
    # A forged credential for that uid rereads at most once a second.
    forged = TOKEN[:-1] + ("A" if TOKEN[-1] != "A" else "B")
    clock.now += node_credentials.REREAD_SECONDS
    for _ in range(20):
        assert await node.identify(forged) is None
    assert store.credential_reads == reads + 2


async def test_revoke_refuses_the_socket_here_and_tells_every_node() -> None:
    hub = LocalHub()
    heard: list[Envelope] = []
    other = LocalBus("node-b", hub)

    async def listen(envelope: Envelope) -> None:
        heard.append(envelope)

    await other.start(listen)
    store = await _store(UID)
    store.credentials[UID] = ACTIVE
    registry = Registry()
    socket = Socket(own=OwnCredential(UID, credentials.digest_of(TOKEN)))
    registry.register(UID, socket)
    bus = LocalBus("node-a", hub)
    node = _node(store, bus=bus, registry=registry)
    record = await node.revoke(UID)
    assert record is not None and record.kind == "revoked" and record.active is None
    assert store.credentials[UID] == record
    assert socket.refused == [credentials.REVOKED]
    await eventually(lambda: bool(heard), what="the other node to hear of it")
    assert heard[0].event == CredentialChanged(UID) and heard[0].source == "node-a"
    # Again: nothing changes.
    assert await node.revoke(UID) == record


async def test_an_event_checks_the_socket_held_here() -> None:
    store = await _store(UID)
    registry = Registry()
    shared = Socket()
    registry.register(UID, shared)
    node = _node(store, registry=registry)
    store.credentials[UID] = ACTIVE  # switched on another node
    await node.on_event(Envelope(CredentialChanged(UID), source="node-b", sent_at=0.0))
    assert shared.refused == [credentials.OWN_CREDENTIAL_REQUIRED]


async def test_rotate_mints_stores_and_pushes_to_the_socket_here() -> None:
    store = await _store(UID)
    store.credentials[UID] = ACTIVE
    registry = Registry()
    socket = Socket(own=OwnCredential(UID, credentials.digest_of(TOKEN)))
    registry.register(UID, socket)
    node = _node(store, registry=registry)
    record = await node.rotate(UID, CAPS)
    assert record is not None and record.rotate
    [push] = socket.pushed
    offer = push.reply.connection_settings
    [header] = offer.opamp.headers.headers
    new = header.value.removeprefix("Bearer ")
    assert credentials.parse(new) is not None and new != TOKEN
    stored = store.credentials[UID]
    assert stored.active == ACTIVE.active and stored.pending == credentials.digest_of(new)
    assert not stored.rotate and not socket.refused


async def test_rotate_without_a_socket_waits_for_the_next_message() -> None:
    store = await _store(UID)
    node = _node(store)
    record = await node.rotate(UID, CAPS)
    assert record == AgentCredential(rotate=True, updated_at=NOW)


async def test_rotate_lets_a_revoked_agent_back_on_shared_keys() -> None:
    store = await _store(UID)
    store.credentials[UID] = AgentCredential(revoked=True)
    node = _node(store)
    assert await node.rotate(UID, CAPS) is None
    assert UID not in store.credentials


async def test_rotate_is_refused_when_it_cannot_be_offered() -> None:
    store = await _store(UID)
    with pytest.raises(NotOffered, match="per-agent credentials are off"):
        await _node(store, fleet=SHARED_FLEET).rotate(UID, CAPS)
    with pytest.raises(NotOffered, match="AcceptsOpAMPConnectionSettings"):
        await _node(store).rotate(UID, caps.REPORTS_STATUS)
    # One already on its own credential may be rotated whatever it reports now.
    store.credentials[UID] = ACTIVE
    assert (await _node(store).rotate(UID, caps.REPORTS_STATUS)) == replace(
        ACTIVE, rotate=True, updated_at=NOW
    )


async def test_a_change_that_keeps_losing_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    store = await _store(UID)

    async def never(uid: bytes, expected: object, new: object) -> bool:
        return False

    monkeypatch.setattr(store, "put_credential", never)
    with pytest.raises(StoreUnavailable, match="kept changing"):
        await _node(store).revoke(UID)


async def test_caught_up_checks_every_socket_against_the_store() -> None:
    store = await _store(UID, uid(2))
    registry = Registry()
    revoked, fine = Socket(), Socket()
    registry.register(UID, revoked)
    registry.register(uid(2), fine)
    node = _node(store, registry=registry)
    assert await node.get(UID) is None  # a copy from before the outage
    store.credentials[UID] = AgentCredential(revoked=True)
    await node.caught_up()
    assert revoked.refused == [credentials.REVOKED] and not fine.refused
    assert node.peek(UID) == AgentCredential(revoked=True)


class FailingStore(MemoryStore):
    failing = False

    async def get_credentials(self, uids: Sequence[bytes]) -> dict[bytes, AgentCredential]:
        if self.failing:
            raise StoreUnavailable("the store is down")
        return await super().get_credentials(uids)


async def test_a_failing_store_is_an_error_for_every_waiter_and_a_warning_for_events(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = FailingStore()
    registry = Registry()
    socket = Socket()
    registry.register(UID, socket)
    node = _node(store, registry=registry)
    store.failing = True
    results = await asyncio.gather(node.get(UID), node.get(UID), return_exceptions=True)
    assert all(isinstance(r, StoreUnavailable) for r in results)
    assert node.peek(UID) is MISSING
    with pytest.raises(StoreUnavailable):
        await node.identify(TOKEN)
    # A change event while the store is down: the socket stays (checked again when the bus or the
    # agent comes back), and it says so.
    await node.on_event(Envelope(CredentialChanged(UID), source="node-b", sent_at=0.0))
    assert not socket.refused and "cannot read a changed credential record" in caplog.text
    await node.caught_up()
    assert "cannot check the held sockets' credentials" in caplog.text
    store.failing = False
    assert await node.get(UID) is None
