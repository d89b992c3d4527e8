"""The bus port: how gateway nodes tell each other things, and who holds which agent's socket.

Two kinds of traffic:
- fleet-wide events (ConfigsChanged, and CredentialChanged about one agent, whose credential record
  every node may cache) go to every node (`broadcast`);
- targeted events (AgentCommand, ConnectionTakenOver) go to one node's channel (`send`), found through
  the owner record `uid -> Owner(node, epoch)` that the node holding the socket claims.

Besides the per-agent owner records, each node keeps a liveness record with a short TTL (`beat`,
--node-ttl): owner records of a node whose liveness expired (killed, hung, partitioned) are ignored,
so its agents show as not connected within seconds, not after the owner TTL.

Everything on the bus is a latency shortcut: desired state lives in the store and is re-checked on
agent messages, so a lost event costs time, never correctness. Adapters: local.py (in-process, one
node) and redis.py (pub/sub + owner keys, many nodes).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.fleet.agent import InvalidInstanceUid, uid_bytes, uid_str


class BusUnavailable(Exception):
    """The bus cannot be reached right now; callers degrade (store a pending command, skip a claim)."""


class BadEvent(ValueError):
    """A bus message that is not an event this node understands (other version, or garbage)."""


_json_string = json.encoder.encode_basestring_ascii


@dataclass(frozen=True, slots=True)
class ConfigsChanged:
    """Desired configuration changed somewhere in the fleet: every node re-checks its own sockets."""

    reason: str = ""


@dataclass(frozen=True, slots=True)
class AgentCommand:
    """Deliver a ServerToAgentCommand (CommandType value) to the agent if this node holds its socket."""

    uid: bytes
    command: int
    # The id the command has in the record ("" from a node before command ids): see node/routing.py.
    command_id: str = ""


@dataclass(frozen=True, slots=True)
class ConnectionTakenOver:
    """The agent connected again on `new_node`: close the connection whose epoch is `epoch`."""

    uid: bytes
    new_node: str
    epoch: str


@dataclass(frozen=True, slots=True)
class CredentialChanged:
    """The agent's credential record changed (per-agent credentials: minted, activated, rotation asked
    for, revoked): every node drops its cached copy, and the node holding the agent's socket checks
    it again (closing it if it is refused now, pushing a new credential if one is due)."""

    uid: bytes


Event = ConfigsChanged | AgentCommand | ConnectionTakenOver | CredentialChanged
_EVENTS: dict[str, type[Event]] = {
    cls.__name__: cls for cls in (ConfigsChanged, AgentCommand, ConnectionTakenOver, CredentialChanged)
}


@dataclass(frozen=True, slots=True)
class Envelope:
    event: Event
    # The node that published it, and when (its wall clock: lag across nodes includes clock skew).
    source: str
    sent_at: float


@dataclass(frozen=True, slots=True)
class Owner:
    """Who holds an agent's WebSocket: a node, and the epoch (id) of that connection."""

    node: str
    epoch: str

    def encode(self) -> str:
        """Compact JSON, keys sorted: what json.dumps(..., sort_keys=True) gives, at a tenth of its
        cost (every held agent's owner record is re-asserted every third of --owner-ttl)."""
        return '{"epoch":' + _json_string(self.epoch) + ',"node":' + _json_string(self.node) + "}"

    @classmethod
    def decode(cls, data: str | bytes) -> Owner:
        try:
            raw = json.loads(data)
            return cls(node=str(raw["node"]), epoch=str(raw["epoch"]))
        except (ValueError, TypeError, KeyError) as exc:
            raise BadEvent(f"not an owner record: {data!r}") from exc


def encode(envelope: Envelope) -> bytes:
    event = envelope.event
    body: dict[str, Any] = {
        "type": type(event).__name__,
        "source": envelope.source,
        "sent_at": envelope.sent_at,
    }
    for f in dataclasses.fields(event):
        value = getattr(event, f.name)
        # Only instance uids are bytes; they travel as canonical UUID strings, like everywhere else.
        body[f.name] = uid_str(value) if isinstance(value, bytes) else value
    return json.dumps(body, separators=(",", ":")).encode()


def decode(data: bytes | str) -> Envelope:
    try:
        raw = json.loads(data)
        cls = _EVENTS[raw["type"]]
        values: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            if f.name not in raw and f.default is not dataclasses.MISSING:
                # A field added later: a node of the previous version leaves it out.
                continue
            value = raw[f.name]
            values[f.name] = uid_bytes(value) if f.type == "bytes" else value
        return Envelope(event=cls(**values), source=str(raw["source"]), sent_at=float(raw["sent_at"]))
    except (ValueError, TypeError, KeyError, InvalidInstanceUid) as exc:
        raise BadEvent(f"cannot decode bus message {data[:200]!r}: {exc}") from exc


Handler = Callable[[Envelope], Coroutine[Any, Any, None]]
OnUp = Callable[[], Coroutine[Any, Any, None]]


class Bus(Protocol):
    node_id: str
    # "local" or "redis", for /readyz and logs.
    kind: str

    @property
    def up(self) -> bool:
        """True while events can be sent and received."""

    @property
    def authoritative(self) -> bool:
        """True if `owners()` knows the sockets of every node: an absent owner means not connected."""

    async def start(self, handler: Handler, on_up: OnUp | None = None) -> None:
        """Begin delivering events to `handler`; call `on_up` every time the bus (re)connects."""

    async def stop(self) -> None: ...

    async def broadcast(self, event: Event) -> int:
        """Publish to every node; the number of nodes that received it."""

    async def send(self, node: str, event: Event) -> int:
        """Publish to one node's channel; 0 means nobody listens there (dead or partitioned node)."""

    async def claim(self, claims: Sequence[tuple[bytes, Owner]]) -> list[Owner | None]:
        """Record these owners unconditionally (the newest connection wins); the previous owners."""

    async def release(self, releases: Sequence[tuple[bytes, Owner]]) -> None:
        """Drop owner records that still name exactly these owners."""

    async def refresh(self, claims: Sequence[tuple[bytes, Owner]]) -> list[bytes]:
        """Keep these owner records alive (re-creating lost ones); the uids someone else owns now."""

    async def owners(self, uids: Sequence[bytes]) -> dict[bytes, Owner]:
        """The owner records of these uids that name a live node (see `live_nodes`): a record of a
        node that died or hangs is not trusted past that node's liveness."""

    async def beat(self, load: int) -> None:
        """Say this node is alive for the next --node-ttl seconds, holding `load` WebSocket agents."""

    async def live_nodes(self) -> dict[str, int]:
        """Every node whose liveness has not expired -> the WebSocket agents it said it holds."""

    def status(self) -> dict[str, Any]:
        """JSON for /readyz."""
