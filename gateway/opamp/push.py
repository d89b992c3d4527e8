"""Push decisions: what the server sends on its own to an agent held on a socket, and the record after.

Pure, like the engine whose rules they reuse: the node's config cache, router and command sweep
ask these for each socket's agent, and the connection only sends the reply and submits the write.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from gateway.fleet import credentials
from gateway.fleet.agent import AgentState, AgentWrite
from gateway.fleet.credentials import AgentCredential, Minted
from gateway.opamp import credential_offers
from gateway.opamp.engine import (
    CredentialChange,
    FleetView,
    accepts_command,
    command_message,
    config_to_offer,
    offer_config,
    offer_packages,
    packages_to_offer,
)
from gateway.proto import opamp_pb2 as pb

_PENDING_COMMAND = frozenset({"pending_command"})


@dataclass(frozen=True, slots=True)
class Push:
    """A server-initiated message for a held agent, and the agent's record once it is sent."""

    reply: pb.ServerToAgent
    write: AgentWrite
    # Committed once sent (a cleared command must never come back from the store), or submitted.
    durable: bool
    # A credential minted for this push: its record is stored (compare-and-set) before the push is
    # sent, and the push is not sent if that fails (gateway/opamp/credential_offers.py).
    credential: CredentialChange | None = None

    @property
    def state(self) -> AgentState:
        return self.write.state


def config_due(
    state: AgentState, fleet: FleetView, now: float, record: AgentCredential | None = None
) -> bool:
    """Whether `config_push` would push now. Cheap: a config (or connection settings, or package)
    change asks this for every agent on the node, and most need nothing (a dict lookup each).
    `record`: the agent's credential record (per-agent credentials)."""
    if config_to_offer(state, fleet, now) is not None or packages_to_offer(state, fleet, now) is not None:
        return True
    return fleet.settings.offers_any and credential_offers.due(state, record, fleet.settings)


def config_push(
    state: AgentState,
    fleet: FleetView,
    now: float,
    record: AgentCredential | None = None,
    mint: Callable[[bytes], Minted] = credentials.mint,
) -> Push | None:
    """The agent's remote config, its connection settings offer and its packages, each if the
    engine's rules say it should get it now, else None. Not durable: a lost offer record only means
    it may be sent once more (unless it carries a new credential, whose record is stored first:
    `Push.credential`)."""
    changed: set[str] = set()
    reply = pb.ServerToAgent(instance_uid=state.instance_uid, capabilities=fleet.server_capabilities)
    offered = offer_config(state, fleet, now, reply, changed)
    after = record
    if fleet.settings.offers_any:
        offered, after = credential_offers.offer(offered, record, fleet.settings, reply, changed, now, mint)
    offered = offer_packages(offered, fleet, now, reply, changed)
    if not changed:
        return None
    write = AgentWrite(state=offered, changed=frozenset(changed))
    if after != record:
        return Push(reply, write, durable=True, credential=CredentialChange(record, after))
    return Push(reply, write, durable=False)


def command_push(state: AgentState, command: int, fleet: FleetView) -> Push | None:
    """`command` for the agent, or None if it does not accept it. Once sent, the record holds no
    pending command: a copy stored while the agent's node was unreachable is satisfied (one pending
    message per kind, spec 6.2), not a second restart when the record is next loaded."""
    if not accepts_command(state, command):
        return None
    cleared = state.updated(pending_command=None, command_id="")
    reply = command_message(state.instance_uid, command, fleet)
    return Push(reply, AgentWrite(state=cleared, changed=_PENDING_COMMAND), durable=True)
