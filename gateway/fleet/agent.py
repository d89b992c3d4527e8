"""The agent record: what the gateway remembers about one OpAMP agent.

Sub-messages are kept as their deterministic protobuf encoding. That is lossless (every AnyValue
type, every health node, every config file survives), cheap to compare for "changed?", and each
store adapter derives the indexed fields it needs from it with `facts()`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from functools import cached_property
from typing import Any, Literal

from gateway.fleet.attributes import JSONValue, key_values, scalar_text
from gateway.proto import opamp_pb2 as pb

# Fields a plain heartbeat touches. A write that changes nothing else is a cheap "touch". `node` and
# `transport` are here so an HTTP agent polling through a round-robin balancer stays a touch.
HEARTBEAT_FIELDS = frozenset({"last_seen", "sequence_num", "node", "transport"})
# What a plain heartbeat changes: one shared set, not one allocated per message.
TOUCHED = frozenset({"last_seen", "sequence_num"})

Transport = Literal["http", "websocket"]


class InvalidInstanceUid(ValueError):
    """An instance_uid that is not a canonical UUID string (admin API) or not 16 bytes (wire)."""


def uid_str(uid: bytes) -> str:
    """The canonical UUID string, as str(uuid.UUID(bytes=uid)) at a quarter of its cost (presence
    names every held agent's owner key by it, every third of --owner-ttl)."""
    if len(uid) != 16:
        raise ValueError("bytes is not a 16-char string")
    h = uid.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def uid_bytes(text: str) -> bytes:
    try:
        parsed = uuid.UUID(text)
    except ValueError:
        raise InvalidInstanceUid(f"not a UUID: {text!r}") from None
    if str(parsed) != text.lower():
        raise InvalidInstanceUid(f"not a canonical UUID string: {text!r}")
    return parsed.bytes


@dataclass(frozen=True, slots=True)
class AgentState:
    instance_uid: bytes
    enrolled_at: float
    last_seen: float
    sequence_num: int = 0
    capabilities: int = 0
    # Serialized sub-messages; None means "never reported".
    description: bytes | None = None
    health: bytes | None = None
    effective_config: bytes | None = None
    remote_config_status: bytes | None = None
    disconnected: bool = False
    previous_instance_uids: tuple[bytes, ...] = ()
    # A ServerToAgentCommand (CommandType value) waiting for the agent's next message; None: none.
    pending_command: int | None = None
    # The id of that command ("" with none): a node delivering a command it heard of over the bus
    # checks the record still holds it, so an agent that moved never gets one request twice.
    command_id: str = ""
    # The node and transport that handled the agent's last message ("" before this was recorded).
    node: str = ""
    transport: Transport | Literal[""] = ""
    # Remote config bookkeeping (engine rules, docs/opamp.md): the config_hash last sent to the agent
    # and when (0: never), so it is not sent again before the agent reports or a timeout passes; and
    # a hash the agent reported FAILED for, so it is not sent again until the desired hash changes.
    offered_config_hash: bytes | None = None
    offered_at: float = 0.0
    failed_config_hash: bytes | None = None
    # The hash of the ConnectionSettingsOffers (the heartbeat interval, gateway/opamp/heartbeat.py)
    # last sent to the agent, so it is not offered again; None: none since its last (re)connection.
    offered_settings_hash: bytes | None = None
    # The uid a live agent held when this one arrived with it: this agent is its clone and was given
    # a uid of its own (gateway/node/duplicates.py). None: not a duplicate.
    duplicate_of: bytes | None = None
    # The agent's AvailableComponents (serialized), stored only when it carries the details, not just
    # the hash (the engine asks for them with ReportAvailableComponents when the hash is new).
    available_components: bytes | None = None
    # Reported parts (description, health, effective_config, remote_config_status) the store left
    # out because the record would exceed its size bound (Elasticsearch, docs/opamp.md section 10).
    oversized: tuple[str, ...] = ()
    # The id of the agent key (or key group) the agent is bound to (gateway/auth.py, docs/security.md):
    # only a client with that key may speak for it. "" for an agent enrolled while no keys were
    # configured: bound to nothing, adopted by the first key that speaks for it.
    key_id: str = ""
    # The agent's last ConnectionSettingsStatus (serialized; ReportsConnectionSettingsStatus), None:
    # never reported.
    connection_settings_status: bytes | None = None
    # The agent's last PackageStatuses (serialized; ReportsPackageStatuses), None: never reported.
    package_statuses: bytes | None = None
    # Package bookkeeping (gateway/opamp/package_offers.py), as for remote config: the
    # all_packages_hash last offered to the agent and when (0: never).
    offered_packages_hash: bytes | None = None
    offered_packages_at: float = 0.0

    @property
    def uid(self) -> str:
        return uid_str(self.instance_uid)

    def touched(self, last_seen: float, sequence_num: int) -> AgentState:
        """This record after a plain heartbeat: `replace(self, last_seen=..., sequence_num=...)`."""
        return _touched(self, last_seen, sequence_num)

    def updated(self, **changes: Any) -> AgentState:
        """`dataclasses.replace(self, **changes)` at a quarter of its cost: the engine makes a few
        per message. Raises TypeError for a name that is not a field, as replace() does."""
        if not changes.keys() <= _FIELD_NAMES:
            unknown = ", ".join(sorted(changes.keys() - _FIELD_NAMES))
            raise TypeError(f"AgentState has no field {unknown}")
        return _updated(self, changes)


def _copier(signature: str, value: Callable[[str], str]) -> Callable[..., AgentState]:
    """A function `def <signature>` returning a new record whose each field is the expression
    `value(name)`. Copies of a record at a quarter of `replace()`'s cost: a frozen dataclass's
    __init__ sets each field through object.__setattr__, and replace() adds field introspection and a
    kwargs dict; this sets the slots directly, in code generated from the fields (as dataclasses
    itself does), so a new field is copied without anyone remembering to add it here."""
    env: dict[str, object] = {"_new": object.__new__, "_cls": AgentState}
    body = [f"def {signature}:", "    new = _new(_cls)"]
    for name in _FIELD_NAMES_IN_ORDER:
        env[f"_set_{name}"] = getattr(AgentState, name).__set__
        body.append(f"    _set_{name}(new, {value(name)})")
    body.append("    return new")
    exec("\n".join(body), env)
    copier: Callable[..., AgentState] = env[signature.split("(")[0]]  # type: ignore[assignment]
    return copier


_FIELD_NAMES_IN_ORDER = tuple(f.name for f in fields(AgentState))
_FIELD_NAMES = frozenset(_FIELD_NAMES_IN_ORDER)
# Once per heartbeat: the two fields as arguments, no dict.
_touched = _copier(
    "touched(self, last_seen, sequence_num)",
    lambda name: name if name in ("last_seen", "sequence_num") else f"self.{name}",
)
_updated = _copier(
    "updated(self, changes)", lambda name: f"changes[{name!r}] if {name!r} in changes else self.{name}"
)


@dataclass(frozen=True, slots=True)
class AgentWrite:
    """One change to store: the full new record and the names of the fields that changed."""

    state: AgentState
    changed: frozenset[str]
    # Set when the record moved to a new uid: the old row goes and becomes an alias.
    previous_uid: bytes | None = None

    @property
    def is_touch(self) -> bool:
        return self.previous_uid is None and self.changed <= HEARTBEAT_FIELDS

    def merged(self, later: AgentWrite) -> AgentWrite:
        """Coalesce two writes for one agent: the later record wins, changes add up."""
        if later.previous_uid is None and later.changed <= self.changed:
            # Heartbeat after heartbeat: no new set to build.
            return AgentWrite(later.state, self.changed, self.previous_uid)
        return AgentWrite(
            state=later.state,
            changed=self.changed | later.changed,
            previous_uid=later.previous_uid or self.previous_uid,
        )


@dataclass(frozen=True)
class AgentFacts:
    """Fields derived from the record for filtering, search and fleet summaries."""

    identifying: dict[str, JSONValue] = field(default_factory=dict)
    non_identifying: dict[str, JSONValue] = field(default_factory=dict)
    healthy: bool | None = None

    @cached_property
    def attributes(self) -> dict[str, str]:
        """Both attribute sets flattened to text; identifying ones win a key clash."""
        flat = {k: scalar_text(v) for k, v in self.non_identifying.items()}
        flat.update({k: scalar_text(v) for k, v in self.identifying.items()})
        return flat

    @property
    def agent_type(self) -> str:
        return self.attributes.get("service.name", "")

    @property
    def agent_version(self) -> str:
        return self.attributes.get("service.version", "")

    @property
    def os_type(self) -> str:
        return self.attributes.get("os.type", "")

    @property
    def host_name(self) -> str:
        return self.attributes.get("host.name", "")

    def search_text(self, uid: str) -> str:
        """Lower-cased text that `q` searches: the uid and every attribute value."""
        return " ".join([uid, *self.attributes.values()]).lower()


def facts(state: AgentState) -> AgentFacts:
    identifying: dict[str, JSONValue] = {}
    non_identifying: dict[str, JSONValue] = {}
    if state.description is not None:
        desc = pb.AgentDescription.FromString(state.description)
        identifying = key_values(desc.identifying_attributes)
        non_identifying = key_values(desc.non_identifying_attributes)
    return AgentFacts(identifying=identifying, non_identifying=non_identifying, healthy=healthy_of(state))


def healthy_of(state: AgentState) -> bool | None:
    """The top-level `healthy` of the agent's last reported health; None: never reported."""
    if state.health is None:
        return None
    return pb.ComponentHealth.FromString(state.health).healthy
