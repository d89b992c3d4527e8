"""The protocol core: one AgentToServer in, the reply and the state change out.

Pure: no I/O, no clock reads, no globals. The caller passes the stored record (or None), the
fleet's desired state, the time and a uid factory; it gets back everything it must send and store.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Literal

from gateway.fleet import credentials
from gateway.fleet.agent import TOUCHED, AgentState, AgentWrite
from gateway.fleet.credentials import AgentCredential, Minted, OwnCredential
from gateway.fleet.desired import ConfigSet
from gateway.fleet.package_set import PackageSet
from gateway.opamp import capabilities as caps, credential_offers, package_offers
from gateway.opamp.connection_offers import SettingsSet
from gateway.proto import opamp_pb2 as pb

UID_LENGTH = 16

Event = Literal["enrolled", "moved", "reported", "heartbeat", "disconnected", "rejected", "forbidden"]

# Changes that are committed before the reply goes out (design principle 4).
_DURABLE_FIELDS = frozenset(
    {
        "enrolled",
        "instance_uid",
        "description",
        "health",
        "remote_config_status",
        "disconnected",
        "capabilities",
        # A command is cleared before the reply that carries it goes out: delivered at most once.
        "pending_command",
        # An anonymous agent adopted by the key that spoke for it: bound before the reply.
        "key_id",
        # Except when only download progress moved (see _handle).
        "package_statuses",
    }
)
# The capability an agent must report for each ServerToAgentCommand type (spec 8.4).
COMMAND_CAPABILITY: dict[int, int] = {pb.CommandType_Restart: caps.ACCEPTS_RESTART_COMMAND}
# The only fields `command` may travel with (spec 8.4: "send commands in a message of their own").
_COMMAND_COMPANIONS = frozenset({"instance_uid", "capabilities"})
# Sub-messages the agent may omit when unchanged (status compression).
_SUB_MESSAGES = ("description", "health", "effective_config", "remote_config_status", "package_statuses")
_WIRE_NAMES = {
    "description": "agent_description",
    "health": "health",
    "effective_config": "effective_config",
    "remote_config_status": "remote_config_status",
    "package_statuses": "package_statuses",
}


# Seconds before a remote config the agent has not reported on is sent again (over HTTP, or on the
# same WebSocket); a new connection does not wait.
DEFAULT_CONFIG_RESEND_AFTER = 60.0
# The largest agent_description kept (--max-description-bytes), and the most attributes it may
# carry: a larger one is refused with BadRequest and the agent keeps its old record.
DEFAULT_MAX_DESCRIPTION_BYTES = 64 * 1024
MAX_DESCRIPTION_ATTRIBUTES = 1024


@dataclass(frozen=True, slots=True)
class FleetView:
    """What the fleet wants, as far as the engine needs it."""

    server_capabilities: int = caps.SERVER_CAPABILITIES
    configs: ConfigSet = field(default_factory=ConfigSet)
    config_resend_after: float = DEFAULT_CONFIG_RESEND_AFTER
    max_description_bytes: int = DEFAULT_MAX_DESCRIPTION_BYTES
    # The heartbeat interval and connection settings offered to agents (connection_offers.py).
    settings: SettingsSet = field(default_factory=SettingsSet)
    # The packages offered to agents (package_offers.py).
    packages: PackageSet = field(default_factory=PackageSet)


@dataclass(frozen=True, slots=True)
class CredentialChange:
    """The agent's credential record before and after a message (gateway/fleet/credentials.py): the
    caller stores `new` only if the store still holds `expected` (compare-and-set), before the reply
    goes out (which may carry a credential minted for it), and does not send the reply otherwise."""

    expected: AgentCredential | None
    new: AgentCredential | None


@dataclass(frozen=True, slots=True)
class Outcome:
    reply: pb.ServerToAgent
    # None when nothing is to be stored (a rejected message, or a goodbye from a stranger).
    write: AgentWrite | None
    durable: bool
    event: Event
    # The agent's record after this message (None if rejected).
    state: AgentState | None
    # The credential record to store before the reply is sent (None: unchanged).
    credential: CredentialChange | None = None
    # Why a forbidden message is refused, for the agent ("": the agent key binding refused it).
    refusal: str = ""

    @property
    def rejected(self) -> bool:
        return self.event == "rejected"

    @property
    def forbidden(self) -> bool:
        """The message spoke for an agent bound to another key, or with a credential that may not
        speak for it: nothing was decided or stored, and the transport refuses it (HTTP 401,
        WebSocket close 1008)."""
        return self.event == "forbidden"


def may_speak_for(state: AgentState, key_id: str | None) -> bool:
    """Whether a client that authenticated with `key_id` (None: agent keys are off) may speak for the
    agent of `state`: the key it is bound to, or any key if it is bound to none (anonymous)."""
    return key_id is None or not state.key_id or state.key_id == key_id


def _forbidden(msg: pb.AgentToServer, refusal: str = "") -> Outcome:
    reply = pb.ServerToAgent(instance_uid=msg.instance_uid)
    reply.error_response.type = pb.ServerErrorResponseType_BadRequest
    reply.error_response.error_message = refusal or "this instance_uid is bound to another agent key"
    return Outcome(reply, None, False, "forbidden", None, refusal=refusal)


def bad_request(instance_uid: bytes, message: str) -> pb.ServerToAgent:
    """A ServerErrorResponse{BadRequest}: only instance_uid beside it (spec: later fields unset)."""
    reply = pb.ServerToAgent(instance_uid=instance_uid)
    reply.error_response.type = pb.ServerErrorResponseType_BadRequest
    reply.error_response.error_message = message
    return reply


def undecodable() -> pb.ServerToAgent:
    """The answer to bytes that are not an AgentToServer: BadRequest, with no uid to echo."""
    return bad_request(b"", "the message is not a valid AgentToServer")


def reply_too_large(instance_uid: bytes) -> bytes:
    """What both transports send instead of a reply over the message size limit (spec: never send
    it, record it): a serialized ServerErrorResponse{Unknown}. Not BadRequest, which the spec keeps
    for a malformed AgentToServer (the agent's message was fine), nor Unavailable (a retry would get
    the same reply)."""
    reply = pb.ServerToAgent(instance_uid=instance_uid)
    reply.error_response.type = pb.ServerErrorResponseType_Unknown
    reply.error_response.error_message = "reply exceeded the server's message size limit"
    data: bytes = reply.SerializeToString()
    return data


def unavailable(instance_uid: bytes, message: str, retry_after_seconds: float | None) -> pb.ServerToAgent:
    reply = pb.ServerToAgent(instance_uid=instance_uid)
    reply.error_response.type = pb.ServerErrorResponseType_Unavailable
    reply.error_response.error_message = message
    if retry_after_seconds is not None:
        reply.error_response.retry_info.retry_after_nanoseconds = int(retry_after_seconds * 1e9)
    return reply


def _rejected(msg: pb.AgentToServer, reason: str) -> Outcome:
    return Outcome(bad_request(msg.instance_uid, reason), None, False, "rejected", None)


def _serialized(msg: pb.AgentToServer, name: str) -> bytes | None:
    wire = _WIRE_NAMES[name]
    if not msg.HasField(wire):
        return None
    sub = getattr(msg, wire)
    data: bytes = sub.SerializeToString(deterministic=True)
    return data


def _components(msg: pb.AgentToServer, base: AgentState) -> bytes | None:
    """The AvailableComponents to store from `msg`: only one with details, and only when new."""
    if not msg.HasField("available_components") or not msg.available_components.components:
        return None
    data: bytes = msg.available_components.SerializeToString(deterministic=True)
    return None if data == base.available_components else data


def _components_wanted(msg: pb.AgentToServer, state: AgentState) -> bool:
    """Ask for the details (ReportAvailableComponents) when an agent with ReportsAvailableComponents
    reports a hash whose details are not stored (spec: the server MAY ask on an unknown hash)."""
    if not state.capabilities & caps.REPORTS_AVAILABLE_COMPONENTS or not msg.HasField("available_components"):
        return False
    if state.available_components is None:
        return True
    return pb.AvailableComponents.FromString(state.available_components).hash != msg.available_components.hash


def _is_full_report(msg: pb.AgentToServer, capabilities: int) -> bool:
    """Carries everything the agent's capabilities say it reports (remote config status aside: see
    `_config_unknown`)."""
    if not msg.HasField("agent_description"):
        return False
    if capabilities & caps.REPORTS_HEALTH and not msg.HasField("health"):
        return False
    return not (capabilities & caps.REPORTS_EFFECTIVE_CONFIG and not msg.HasField("effective_config"))


def _config_unknown(msg: pb.AgentToServer, state: AgentState, fleet: FleetView, now: float) -> bool:
    """After a gap (or from a stranger), an agent with ReportsRemoteConfig that leaves out
    remote_config_status has not said which config it runs. Were there a config to offer, the
    server would offer again one the agent may already run (issue 14): ask for the full state and
    hold the offer. Without a config to offer it changes nothing, so agents that never had one
    (they send no status before their first config, opamp-spec #379) are not asked."""
    if not state.capabilities & caps.REPORTS_REMOTE_CONFIG or msg.HasField("remote_config_status"):
        return False
    return bool(fleet.configs) and config_to_offer(state, fleet, now) is not None


def _identity(
    state: AgentState | None,
    msg: pb.AgentToServer,
    wants_uid: bool,
    reply: pb.ServerToAgent,
    now: float,
    mint_uid: Callable[[], bytes],
    key_id: str | None,
) -> tuple[AgentState, Event, bool, bytes | None]:
    """Which record this message updates, under which uid: (base record, event, sequence gap?,
    uid the record moves away from). Sets agent_identification on the reply when the uid changes."""
    if state is None:
        uid = mint_uid() if wants_uid else msg.instance_uid
        if wants_uid:
            reply.agent_identification.new_instance_uid = uid
        base = AgentState(
            instance_uid=uid,
            enrolled_at=now,
            last_seen=now,
            sequence_num=msg.sequence_num,
            key_id=key_id or "",
        )
        return base, "enrolled", True, None
    gap = msg.sequence_num != state.sequence_num + 1
    if state.instance_uid != msg.instance_uid:
        # The agent still uses a uid we moved it away from: tell it again (idempotent re-answer).
        reply.agent_identification.new_instance_uid = state.instance_uid
        return state, "reported", gap, None
    if wants_uid:
        new_uid = mint_uid()
        reply.agent_identification.new_instance_uid = new_uid
        moved = replace(
            state,
            instance_uid=new_uid,
            previous_instance_uids=(*state.previous_instance_uids, state.instance_uid),
        )
        return moved, "moved", gap, state.instance_uid
    return state, "reported", gap, None


def _reported(
    base: AgentState, msg: pb.AgentToServer, now: float, disconnecting: bool, changed: set[str]
) -> AgentState:
    """The record with what the message reports applied; adds the changed fields' names to `changed`."""
    updates: dict[str, object] = {"last_seen": now, "sequence_num": msg.sequence_num}
    changed.update(("last_seen", "sequence_num"))
    # capabilities MUST always be set, but a bare poll may leave it 0: that means "not reported".
    if msg.capabilities and msg.capabilities != base.capabilities:
        updates["capabilities"] = msg.capabilities
        changed.add("capabilities")
    for name in _SUB_MESSAGES:
        data = _serialized(msg, name)
        if data is not None and data != getattr(base, name):
            updates[name] = data
            changed.add(name)
    components = _components(msg, base)
    if components is not None:
        updates["available_components"] = components
        changed.add("available_components")
    if disconnecting != base.disconnected:
        updates["disconnected"] = disconnecting
        changed.add("disconnected")
    new_state = base.updated(**updates)
    if "remote_config_status" in changed:
        new_state = _on_config_report(new_state, msg.remote_config_status, changed)
    if "package_statuses" in changed:
        new_state = package_offers.on_package_report(base, new_state, changed)
    return new_state


def handle(
    state: AgentState | None,
    msg: pb.AgentToServer,
    fleet: FleetView,
    now: float,
    mint_uid: Callable[[], bytes],
    *,
    duplicate_of: bytes | None = None,
    key_id: str | None = None,
    credential: AgentCredential | None = None,
    own: OwnCredential | None = None,
    mint_credential: Callable[[bytes], Minted] = credentials.mint,
) -> Outcome:
    """Decide the reply and the state change for one message.

    `state` is the record stored under msg.instance_uid, or the record that uid was moved to (the
    agent has not adopted its new uid yet), or None for an agent never seen. `duplicate_of`: the
    message comes from a clone of the live agent holding that uid (with `state` None and
    RequestInstanceUid set, so it is enrolled under a new uid); its record keeps the relation.
    `key_id`: the id of the
    agent key the client authenticated with (None: agent keys are off). A message for an agent bound
    to another key is refused ("forbidden") before anything else; a new agent is bound to `key_id`,
    an anonymous one (bound to none) is adopted by it, and a uid it moves to keeps its key.

    Per-agent credentials (gateway/fleet/credentials.py): `credential` is the credential record of
    msg.instance_uid, `own` the agent credential the client authenticated with (None: a shared agent
    key, `key_id`). A credential speaks only for its own uid, a uid on its own credential (or revoked)
    refuses shared keys, and the first use of a pending credential makes it the active one. The
    offers of credentials are credential_offers.py's; `mint_credential` makes new ones.
    """
    authenticated = key_id is not None or own is not None
    refusal = credentials.refusal(credential, own, msg.instance_uid, authenticated)
    if not refusal and own is not None and state is None:
        # A credential never enrolls: its agent's record is gone (forgotten).
        refusal = credentials.CREDENTIAL_REFUSED
    if refusal:
        return _forbidden(msg, refusal)
    record = credential
    if own is not None and record is not None:
        record = credentials.activated(record, own.digest, now)
    if state is not None:
        if not may_speak_for(state, key_id):
            return _forbidden(msg)
        if (key_id is None or state.key_id == key_id) and record is credential:
            outcome = _heartbeat(state, msg, fleet, now, record)
            if outcome is not None:
                return outcome
    outcome = _handle(
        state,
        msg,
        fleet,
        now,
        mint_uid,
        duplicate_of=duplicate_of,
        key_id=key_id,
        record=record,
        own=own,
        mint_credential=mint_credential,
    )
    final = record if outcome.credential is None else outcome.credential.new
    if outcome.write is None:
        return replace(outcome, credential=None) if outcome.credential is not None else outcome
    if outcome.write.previous_uid is not None:
        # Moved: compared with the new uid's record (none), as _handle did.
        return outcome
    if final != credential:
        # Activated or minted (or both), compared with what the store held when the message came in.
        outcome = replace(outcome, credential=CredentialChange(credential, final), durable=True)
    return outcome


def _heartbeat(
    state: AgentState,
    msg: pb.AgentToServer,
    fleet: FleetView,
    now: float,
    record: AgentCredential | None = None,
) -> Outcome | None:
    """The outcome of a plain heartbeat, or None when the message needs `_handle`'s full rules.

    Nearly every message of a connected fleet is a heartbeat, so it skips what `_handle` would find
    unchanged: the sub-message comparisons, the `changed` bookkeeping and `updated()`. The result
    is the one `_handle` gives (tests/opamp/test_engine_fast_path.py compares them). It applies
    when the agent is in step (its own uid, sequence_num + 1, capabilities unset or unchanged),
    reports nothing new, waits for no command and gets no config or heartbeat offer.
    """
    seq = msg.sequence_num
    if (
        seq != state.sequence_num + 1
        or msg.instance_uid != state.instance_uid
        or msg.flags & caps.REQUEST_INSTANCE_UID
        or (msg.capabilities and msg.capabilities != state.capabilities)
        or state.disconnected
        or state.pending_command is not None
        or len(msg.instance_uid) != UID_LENGTH
        or msg.HasField("agent_disconnect")
        or msg.HasField("agent_description")
        or msg.HasField("health")
        or msg.HasField("effective_config")
        or msg.HasField("remote_config_status")
        or msg.HasField("connection_settings_request")
        or msg.HasField("available_components")
        or msg.HasField("connection_settings_status")
        or msg.HasField("package_statuses")
    ):
        return None
    if fleet.settings.offers_any and credential_offers.due(state, record, fleet.settings):
        return None
    new_state = state.touched(now, seq)
    if fleet.configs and config_to_offer(new_state, fleet, now) is not None:
        return None
    if packages_to_offer(new_state, fleet, now) is not None:
        return None
    reply = pb.ServerToAgent(instance_uid=msg.instance_uid, capabilities=fleet.server_capabilities)
    return Outcome(reply, AgentWrite(new_state, TOUCHED), False, "heartbeat", new_state)


def _handle(
    state: AgentState | None,
    msg: pb.AgentToServer,
    fleet: FleetView,
    now: float,
    mint_uid: Callable[[], bytes],
    *,
    duplicate_of: bytes | None = None,
    key_id: str | None = None,
    record: AgentCredential | None = None,
    own: OwnCredential | None = None,
    mint_credential: Callable[[bytes], Minted] = credentials.mint,
) -> Outcome:
    """`handle` for every message: the full rules."""
    wants_uid = bool(msg.flags & caps.REQUEST_INSTANCE_UID)
    disconnecting = msg.HasField("agent_disconnect")
    refusal = _refusal(state, msg, fleet, wants_uid, disconnecting, _on_own(record, own))
    if refusal:
        return _rejected(msg, refusal)

    reply = pb.ServerToAgent(instance_uid=msg.instance_uid, capabilities=fleet.server_capabilities)

    if state is None and disconnecting:
        # A goodbye from an agent we never knew carries nothing worth enrolling.
        return Outcome(reply, None, False, "disconnected", None)

    base, event, gap, previous_uid = _identity(state, msg, wants_uid, reply, now, mint_uid, key_id)
    # A record that moves leaves its credential record behind: the new uid has none yet.
    record = _moved_with(record, previous_uid)
    if state is None and duplicate_of is not None:
        base = base.updated(duplicate_of=duplicate_of)
    changed: set[str] = set()
    if state is None:
        changed.add("enrolled")
    elif previous_uid is not None:
        changed.add("instance_uid")
    if key_id is not None and base.key_id != key_id:
        # An anonymous agent (bound to no key): the first key that speaks for it adopts it.
        base = base.updated(key_id=key_id)
        changed.add("key_id")

    new_state = _reported(base, msg, now, disconnecting, changed)

    effective_caps = new_state.capabilities
    # Only a gap (or a stranger) proves state was lost. Asking again whenever the description is
    # missing would loop forever with an agent that has none to give.
    lacks_state = gap and not _is_full_report(msg, effective_caps)
    # Which config the agent runs is unknown until its full report says: wait for it.
    unknown_config = gap and not disconnecting and _config_unknown(msg, new_state, fleet, now)
    if (lacks_state or unknown_config) and not disconnecting:
        reply.flags |= caps.REPORT_FULL_STATE
    if not disconnecting and _components_wanted(msg, new_state):
        reply.flags |= caps.REPORT_AVAILABLE_COMPONENTS

    if disconnecting:
        event = "disconnected"
    elif event == "reported" and changed <= {"last_seen", "sequence_num"}:
        event = "heartbeat"
    if msg.HasField("connection_settings_request") and not wants_uid:
        return _csr_refused(msg, base, new_state, changed, lacks_state or unknown_config, event)
    if not disconnecting:
        new_state = _offer_config_and_packages(new_state, fleet, now, reply, changed, unknown_config)
    before = record
    new_state, record = credential_offers.settle(
        new_state, msg, record, fleet.settings, reply, changed, disconnecting, now, mint_credential
    )
    new_state = _deliver_pending(new_state, reply, disconnecting, changed)
    write = AgentWrite(state=new_state, changed=frozenset(changed), previous_uid=previous_uid)
    if record != before:
        # A credential minted (or one activated): the record is committed first, then the credential
        # record compared and set, then the reply goes out (the caller's order).
        return Outcome(reply, write, True, event, new_state, credential=CredentialChange(before, record))
    return Outcome(reply, write, _durable(changed, msg, state, new_state), event, new_state)


def _offer_config_and_packages(
    state: AgentState,
    fleet: FleetView,
    now: float,
    reply: pb.ServerToAgent,
    changed: set[str],
    unknown_config: bool,
) -> AgentState:
    """The config (unless which one the agent runs is unknown yet) and the packages it should get."""
    if not unknown_config:
        state = offer_config(state, fleet, now, reply, changed)
    return offer_packages(state, fleet, now, reply, changed)


def _durable(changed: set[str], msg: pb.AgentToServer, before: AgentState | None, after: AgentState) -> bool:
    """Whether the write is committed before the reply goes out (design principle 4)."""
    durable_changes = changed & _DURABLE_FIELDS
    if durable_changes == {"remote_config_status"} and _only_applying(msg):
        # APPLYING is a step on the way: the APPLIED or FAILED that follows is committed before its
        # reply, and losing APPLYING in a crash only shows the agent as pending a little longer.
        # After a config change every agent sends both at once, so this halves the commits to wait for.
        return False
    if durable_changes == {"package_statuses"} and before is not None:
        # Download progress alone: a lost one only shows an older percentage.
        return package_offers.report_durable(before.package_statuses, after.package_statuses)
    return bool(durable_changes)


def _moved_with(record: AgentCredential | None, previous_uid: bytes | None) -> AgentCredential | None:
    """The credential record of a record that moves (None: its new uid has none) or stays."""
    return None if previous_uid is not None else record


def _on_own(record: AgentCredential | None, own: OwnCredential | None) -> bool:
    """Whether the agent is (or speaks) on its own credential."""
    return own is not None or (record is not None and record.active is not None)


def _refusal(
    state: AgentState | None,
    msg: pb.AgentToServer,
    fleet: FleetView,
    wants_uid: bool,
    disconnecting: bool,
    on_own: bool = False,
) -> str:
    """Why the message is refused as a whole ("" if it is not). `on_own`: the agent is on its own
    credential, which names its uid."""
    # A uid asked for replaces a temporary one, which the spec does not require to be 16 bytes.
    if len(msg.instance_uid) != UID_LENGTH and not (wants_uid and state is None):
        return f"instance_uid must be {UID_LENGTH} bytes, got {len(msg.instance_uid)}"
    too_big = _description_too_big(msg, fleet.max_description_bytes)
    if too_big:
        return too_big
    if wants_uid and disconnecting:
        return "RequestInstanceUid cannot be combined with agent_disconnect"
    if wants_uid and state is not None and on_own:
        # A new uid would leave it without a credential.
        return "an agent on its own credential keeps its instance_uid: RequestInstanceUid is refused"
    return ""


def _description_too_big(msg: pb.AgentToServer, max_bytes: int) -> str:
    """Why the message's agent_description is refused ("" if it is not): over the size or
    attribute bound, it would be stored, cached and listed at the agent's chosen size."""
    if not msg.HasField("agent_description"):
        return ""
    desc = msg.agent_description
    size: int = desc.ByteSize()
    if size > max_bytes:
        return f"agent_description is {size} bytes; the limit is {max_bytes}"
    count = len(desc.identifying_attributes) + len(desc.non_identifying_attributes)
    if count > MAX_DESCRIPTION_ATTRIBUTES:
        return f"agent_description has {count} attributes; the limit is {MAX_DESCRIPTION_ATTRIBUTES}"
    return ""


def _csr_refused(
    msg: pb.AgentToServer,
    base: AgentState,
    new_state: AgentState,
    changed: set[str],
    lacks_state: bool,
    event: Event,
) -> Outcome:
    """A connection_settings_request: this server issues no certificates (it does not advertise
    AcceptsConnectionSettingsRequest), and the spec's answer when issuing fails is BadRequest, so the
    agent stops waiting. What the message reported is still kept; nothing else rides on an error
    reply, and when the reply should have asked for full state the sequence number is left behind
    so the next message asks again."""
    if lacks_state:
        new_state = new_state.updated(sequence_num=base.sequence_num)
    reply = bad_request(
        msg.instance_uid, "this server does not issue certificates (connection_settings_request)"
    )
    write = AgentWrite(state=new_state, changed=frozenset(changed), previous_uid=None)
    return Outcome(reply, write, bool(changed & _DURABLE_FIELDS), event, new_state)


def _only_applying(msg: pb.AgentToServer) -> bool:
    return msg.remote_config_status.status == pb.RemoteConfigStatuses_APPLYING


def accepts_command(state: AgentState, command: int) -> bool:
    needed = COMMAND_CAPABILITY.get(command)
    return needed is not None and bool(state.capabilities & needed)


def command_message(instance_uid: bytes, command: int, fleet: FleetView) -> pb.ServerToAgent:
    """A ServerToAgent carrying only a command (plus the fields spec 8.4 allows beside it)."""
    reply = pb.ServerToAgent(instance_uid=instance_uid, capabilities=fleet.server_capabilities)
    # CommandType_Restart is 0: without SetInParent an all-default sub-message would not be sent.
    reply.command.SetInParent()
    reply.command.type = command  # type: ignore[assignment]
    return reply


def _deliver_pending(
    state: AgentState, reply: pb.ServerToAgent, disconnecting: bool, changed: set[str]
) -> AgentState:
    """Put the pending command into `reply` if the reply has nothing else to say (spec 8.4), and
    return the record with the command cleared; otherwise the command keeps waiting for a quieter
    reply. Adds "pending_command" to `changed` when it clears it."""
    command = state.pending_command
    if command is None or disconnecting:
        return state
    if accepts_command(state, command):
        if {f.name for f, _ in reply.ListFields()} - _COMMAND_COMPANIONS:
            return state
        reply.command.SetInParent()
        reply.command.type = command  # type: ignore[assignment]
    # else: the agent stopped accepting it (capabilities are re-read on every message): drop it.
    changed.add("pending_command")
    return state.updated(pending_command=None, command_id="")


def _on_config_report(state: AgentState, status: pb.RemoteConfigStatus, changed: set[str]) -> AgentState:
    """A new RemoteConfigStatus ends the wait for the last offer; a FAILED one marks the config failed,
    any other one clears that mark.

    The hash reported with FAILED may be the agent's rolled-back config rather than the one that
    failed (the collector supervisor does this), so the offer is what failed when there was one, and
    a FAILED repeated without an offer in between is still about the config that failed. A report
    that is not FAILED says the agent moved on (restarted, or applied something): if its hash is
    not the desired one the spec says the server MUST send the config, so it is offered again.
    """
    updates: dict[str, object] = {}
    if status.status == pb.RemoteConfigStatuses_FAILED:
        failed = (
            state.offered_config_hash or state.failed_config_hash or status.last_remote_config_hash or None
        )
        if failed != state.failed_config_hash:
            updates["failed_config_hash"] = failed
            changed.add("failed_config_hash")
    elif state.failed_config_hash is not None:
        updates["failed_config_hash"] = None
        changed.add("failed_config_hash")
    if state.offered_config_hash is not None:
        updates["offered_config_hash"] = None
        updates["offered_at"] = 0.0
        changed.add("offered_config_hash")
    return state.updated(**updates) if updates else state


def config_to_offer(state: AgentState, fleet: FleetView, now: float) -> pb.AgentRemoteConfig | None:
    """The remote config to send the agent now, or None (engine rules in docs/opamp.md):
    only to agents that accept remote config, only a config whose hash differs from the one the
    agent last reported, never one it reported FAILED for, and not again while an offer of the same
    hash awaits a report (until `config_resend_after` passes). An agent without ReportsRemoteConfig
    never reports, so the hash offered to it is taken as the one it runs: it gets each desired
    config once (proto: `config` SHOULD NOT be set if it has not changed)."""
    if not state.capabilities & caps.ACCEPTS_REMOTE_CONFIG or not fleet.configs:
        return None
    desired = fleet.configs.desired_for(state)
    if desired is None or desired.hash == state.failed_config_hash:
        return None
    if desired.hash == state.offered_config_hash and (
        not state.capabilities & caps.REPORTS_REMOTE_CONFIG
        or now - state.offered_at < fleet.config_resend_after
    ):
        return None
    if state.remote_config_status is not None and desired.hash == fleet.configs.reported_hash(
        state.remote_config_status
    ):
        return None
    return desired.message


def on_new_connection(state: AgentState) -> AgentState:
    """The record as a new connection of the agent should see it: an offer made before the connection
    may never have arrived, so it is not waited for (config_to_offer, packages_to_offer), except for
    an agent that never reports on it, whose last offer is all the server knows of what it runs."""
    state = package_offers.on_new_connection(state)
    if state.offered_config_hash is None or not state.capabilities & caps.REPORTS_REMOTE_CONFIG:
        return state
    return state.updated(offered_config_hash=None, offered_at=0.0)


def offer_config(
    state: AgentState, fleet: FleetView, now: float, reply: pb.ServerToAgent, changed: set[str]
) -> AgentState:
    """Put the agent's remote config into `reply` if it should get it now; the record remembers the
    offer. Adds the changed fields' names to `changed`."""
    message = config_to_offer(state, fleet, now)
    if message is None:
        return state
    reply.remote_config.CopyFrom(message)
    changed.add("offered_config_hash")
    # A new offer: whatever failed before is no longer what the agent is asked to run.
    return state.updated(offered_config_hash=message.config_hash, offered_at=now, failed_config_hash=None)


def packages_to_offer(state: AgentState, fleet: FleetView, now: float) -> pb.PackagesAvailable | None:
    """The packages to send the agent now, or None (gateway/opamp/package_offers.py)."""
    return package_offers.packages_to_offer(state, fleet.packages, now, fleet.config_resend_after)


def offer_packages(
    state: AgentState, fleet: FleetView, now: float, reply: pb.ServerToAgent, changed: set[str]
) -> AgentState:
    """Put the agent's packages into `reply` if it should get them now (package_offers.py)."""
    return package_offers.offer_packages(
        state, fleet.packages, now, fleet.config_resend_after, reply, changed
    )
