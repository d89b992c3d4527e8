"""One AgentToServer through the engine and the writer; shared by every transport."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace

from gateway.fleet.agent import AgentState, AgentWrite, Transport, uid_str
from gateway.fleet.credentials import AgentCredential, OwnCredential
from gateway.fleet.package_status import STATUS_NAMES
from gateway.limits import enrolls
from gateway.opamp import engine
from gateway.proto import opamp_pb2 as pb
from gateway.store.base import StoreError
from gateway.store.breaker import CircuitOpen
from gateway.store.writer import WriterFull, WriterStopped
from gateway.transport.context import OpampNode

logger = logging.getLogger("gateway.transport.pipeline")

_CONFIG_STATUS_NAMES = {
    v.number: v.name.removeprefix("RemoteConfigStatuses_")
    for v in pb.DESCRIPTOR.enum_types_by_name["RemoteConfigStatuses"].values
}


class Shed(Exception):
    """The message was not processed to protect the gateway or because the store is failing;
    the agent should retry later. `reason` is a metric label."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


async def load_state(node: OpampNode, msg: pb.AgentToServer) -> AgentState | None:
    """The stored record for the message's uid (None for bad uids: the engine rejects those)."""
    if len(msg.instance_uid) != engine.UID_LENGTH:
        return None
    try:
        return await node.writer.get(msg.instance_uid)
    except StoreError as exc:
        reason = _store_reason(exc)
        if reason == "store":
            logger.warning("store read failed: %s", exc)
        raise Shed(reason) from exc


def _store_reason(exc: StoreError) -> str:
    """The Shed reason (a metric label) for a store failure; an open circuit is logged by the breaker."""
    return "circuit_open" if isinstance(exc, CircuitOpen) else "store"


def _stamped(outcome: engine.Outcome, node: str, transport: Transport) -> engine.Outcome:
    """Record which node and transport handled the message (plumbing, so not the engine's job)."""
    new, write = outcome.state, outcome.write
    if new is None or write is None or (new.node, new.transport) == (node, transport):
        return outcome
    changed = {"node"} if new.node != node else set()
    if new.transport != transport:
        changed.add("transport")
    new = replace(new, node=node, transport=transport)
    write = replace(write, state=new, changed=write.changed | changed)
    return replace(outcome, state=new, write=write)


async def load_credential(
    node: OpampNode, state: AgentState | None, msg: pb.AgentToServer
) -> AgentCredential | None:
    """The credential record of the agent the message is for (the uid its record lives under), from
    the node's copy (gateway/node/credentials.py); Shed if it must be read and cannot be."""
    uid = state.instance_uid if state is not None else msg.instance_uid
    if len(uid) != engine.UID_LENGTH:
        return None
    try:
        return await node.credentials.get(uid)
    except StoreError as exc:
        reason = _store_reason(exc)
        if reason == "store":
            logger.warning("store read failed: %s", exc)
        raise Shed(reason) from exc


def decide(
    node: OpampNode,
    state: AgentState | None,
    msg: pb.AgentToServer,
    transport: Transport = "http",
    decided: Callable[[OpampNode, engine.Outcome], None] | None = None,
    duplicate_of: bytes | None = None,
    key_id: str | None = None,
    credential: AgentCredential | None = None,
    own: OwnCredential | None = None,
) -> engine.Outcome:
    """Run the engine (Shed when the message would enroll an agent over the enrollment rate).

    `decided`: the transport's own bookkeeping of the outcome, before the write (which may shed it).
    `key_id`: the id of the agent key the client authenticated with (None: keys are off, or `own`);
    the engine refuses a message for an agent bound to another key ("forbidden", counted here).
    `credential`: the agent's credential record, `own`: the agent credential the client authenticated
    with (per-agent credentials; a refusal is counted here too).
    """
    if enrolls(state, msg) and not node.limits.admit_enrollment():
        raise Shed("enrollment_rate")
    outcome = engine.handle(
        state,
        msg,
        node.config_cache.fleet,
        node.clock(),
        node.mint_uid,
        duplicate_of=duplicate_of,
        key_id=key_id,
        credential=credential,
        own=own,
        mint_credential=node.credentials.mint,
    )
    if outcome.forbidden and outcome.refusal:
        node.metrics.credential_event("refused")
        logger.warning(
            "refused a message: %s", outcome.refusal, extra={"instance_uid": uid_str(msg.instance_uid)}
        )
    elif outcome.forbidden:
        node.metrics.key_mismatch(transport)
        logger.warning(
            "refused a message for an agent bound to another agent key (key id %s)",
            key_id,
            extra={"instance_uid": uid_str(msg.instance_uid)},
        )
    outcome = _stamped(outcome, node.settings.node_id, transport)
    if decided is not None:
        decided(node, outcome)
    return outcome


def store(node: OpampNode, outcome: engine.Outcome) -> None:
    """Hand a write that need not be awaited to the writer (Shed if it cannot take it)."""
    assert outcome.write is not None
    try:
        node.writer.submit(outcome.write)
    except WriterFull as exc:
        raise Shed("writer_queue_full") from exc
    except WriterStopped as exc:
        raise Shed("shutting_down") from exc


async def store_durable(node: OpampNode, outcome: engine.Outcome) -> None:
    """Hand a write to the writer and wait for its commit (Shed if it fails)."""
    assert outcome.write is not None
    try:
        await node.writer.submit_durable(outcome.write)
    except WriterFull as exc:
        raise Shed("writer_queue_full") from exc
    except WriterStopped as exc:
        raise Shed("shutting_down") from exc
    except StoreError as exc:
        reason = _store_reason(exc)
        if reason == "store":
            logger.warning("store write failed: %s", exc)
        raise Shed(reason) from exc


async def commit_credential(node: OpampNode, outcome: engine.Outcome) -> None:
    """Store the credential record the outcome changed (compare-and-set), before its reply goes out;
    Shed if it cannot be (the reply, which may carry a credential, is then never sent)."""
    change, state = outcome.credential, outcome.state
    if change is None or state is None:
        return
    try:
        written = await node.credentials.commit(state.instance_uid, change.expected, change.new)
    except StoreError as exc:
        reason = _store_reason(exc)
        if reason == "store":
            logger.warning("store write failed: %s", exc)
        raise Shed(reason) from exc
    if not written:
        # Changed on another node meanwhile (a rotation, a revocation): the agent asks again.
        raise Shed("credential_changed")


def observe(node: OpampNode, outcome: engine.Outcome, msg: pb.AgentToServer) -> None:
    """Metrics and log lines for a handled message."""
    node.metrics.observe_outcome(outcome)
    if outcome.write is not None and "remote_config_status" in outcome.write.changed:
        value = msg.remote_config_status.status
        # An open enum: a newer agent may send a value this gateway does not know.
        name = _CONFIG_STATUS_NAMES.get(value, "unknown")
        node.metrics.config_reported(name)
    if outcome.write is not None and "package_statuses" in outcome.write.changed:
        for status in msg.package_statuses.packages.values():
            node.metrics.package_reported(STATUS_NAMES.get(status.status, "unknown"))
    if outcome.rejected:
        logger.info("rejected a message: %s", outcome.reply.error_response.error_message)
    elif outcome.event in ("enrolled", "moved") and outcome.state is not None:
        logger.info("agent %s", outcome.event, extra={"instance_uid": uid_str(outcome.state.instance_uid)})


async def process(
    node: OpampNode,
    state: AgentState | None,
    msg: pb.AgentToServer,
    transport: Transport = "http",
    decided: Callable[[OpampNode, engine.Outcome], None] | None = None,
    admit: Callable[[AgentWrite], bool] | None = None,
    duplicate_of: bytes | None = None,
    key_id: str | None = None,
    own: OwnCredential | None = None,
) -> engine.Outcome:
    """Run the engine and hand its write to the writer (awaiting the commit when it matters).

    `admit`: asked before the write goes to the writer; False keeps it back (a WebSocket heartbeat
    whose liveness the node persists later, gateway/node/liveness.py). `key_id`, `own`: see
    `decide`; the agent's credential record is read here (the node's copy). A changed credential
    record is stored after the agent's record (a new agent's row must exist) and before the reply.
    """
    # Nearly every message needs neither await below: no coroutine is made for them then.
    if node.config_cache.stale():
        await node.config_cache.refresh_if_stale()
    credential = await load_credential(node, state, msg)
    outcome = decide(node, state, msg, transport, decided, duplicate_of, key_id, credential, own)
    await settle(node, outcome, outcome.write is not None and (admit is None or admit(outcome.write)))
    observe(node, outcome, msg)
    return outcome


async def settle(node: OpampNode, outcome: engine.Outcome, admitted: bool) -> None:
    """Hand a decided message's write to the writer if `admitted`, awaiting its commit when it is
    durable, then store its changed credential record (Shed if either fails)."""
    if admitted:
        if outcome.durable:
            await store_durable(node, outcome)
        else:
            store(node, outcome)
    if outcome.credential is not None:
        await commit_credential(node, outcome)
