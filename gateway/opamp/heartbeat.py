"""Heartbeat offers, and when any connection settings offer is due (spec 3.5, 5, 8.1).

Pure. The offer is a `ConnectionSettingsOffers` whose only setting is
`opamp.heartbeat_interval_seconds` (always set explicitly: an `opamp` offer without it means 0,
"disable heartbeats"), with a `hash` over every setting it carries, so the hash changes exactly when
the interval does. It goes to agents with both `ReportsHeartbeat` (spec: offer an interval only to
them) and `AcceptsOpAMPConnectionSettings` (spec: offer `opamp` settings only to them), once: the
record keeps the hash of the offer the agent last got (`offered_settings_hash`). The operator's
connection settings ride in the same offer, with one hash (gateway/opamp/connection_offers.py);
the rules below hold for that combined offer.

It is offered again when the interval changes (a new hash), and when an agent with
`ReportsConnectionSettingsStatus` reports a hash other than the offered one (spec: the server MUST
then send the settings again), unless it reports FAILED or APPLYING. Not on a reconnect or a
sequence gap: an agent applies `opamp` settings by reconnecting (spec 8.1's offer flow), and a
client restarted to do so starts a new sequence, so offering again on either would loop.
"""

from __future__ import annotations

import hashlib

from gateway.fleet.agent import AgentState
from gateway.opamp import capabilities as caps
from gateway.proto import opamp_pb2 as pb

# Both bits an agent must report to be offered a heartbeat interval.
NEEDED = caps.REPORTS_HEARTBEAT | caps.ACCEPTS_OPAMP_CONNECTION_SETTINGS
# Reported statuses that do not say which settings the agent holds for good.
_UNSETTLED = (pb.ConnectionSettingsStatuses_FAILED, pb.ConnectionSettingsStatuses_APPLYING)
# Versions the hash's input, so a later offer with more settings never collides with this one.
_HASH_DOMAIN = b"opamp-gateway/connection-settings/v1\n"


def heartbeats_expected(capabilities: int) -> bool:
    """Whether an agent's silence means something: it reports ReportsHeartbeat, or has not said
    (capabilities 0). One that reports capabilities without it sends messages only when it has
    something to say (spec: the server should not expect heartbeats from it); on a WebSocket that
    answers pings it is alive however long it stays silent."""
    return not capabilities or bool(capabilities & caps.REPORTS_HEARTBEAT)


def settings_offer(interval_seconds: int) -> pb.ConnectionSettingsOffers | None:
    """The offer of `interval_seconds` (None for 0: nothing is offered)."""
    if interval_seconds <= 0:
        return None
    offer = pb.ConnectionSettingsOffers()
    offer.opamp.heartbeat_interval_seconds = interval_seconds
    offer.hash = hashlib.sha256(_HASH_DOMAIN + offer.opamp.SerializeToString(deterministic=True)).digest()
    return offer


def settings_due(state: AgentState, offer: pb.ConnectionSettingsOffers | None) -> bool:
    """Whether the agent should get `offer` now: the offer made for it (connection_offers.py, which
    applies the capabilities) is one it has not got."""
    return offer is not None and state.offered_settings_hash != offer.hash


def offer_settings(
    state: AgentState,
    offer: pb.ConnectionSettingsOffers | None,
    reply: pb.ServerToAgent,
    changed: set[str],
) -> AgentState:
    """Put `offer` into `reply` if it is due; the record remembers it (and "offered_settings_hash" is
    added to `changed`)."""
    if offer is None or not settings_due(state, offer):
        return state
    reply.connection_settings.CopyFrom(offer)
    changed.add("offered_settings_hash")
    return state.updated(offered_settings_hash=offer.hash)


def settle(
    state: AgentState,
    msg: pb.AgentToServer,
    offer: pb.ConnectionSettingsOffers | None,
    reply: pb.ServerToAgent,
    changed: set[str],
    disconnecting: bool,
) -> AgentState:
    """The engine's step for connection settings: what `msg` reports of them (the status is kept),
    then the offer if it is due (not in the reply to a goodbye)."""
    state = report(state, msg, changed)
    return state if disconnecting else offer_settings(state, offer, reply, changed)


def report(state: AgentState, msg: pb.AgentToServer, changed: set[str]) -> AgentState:
    """What `msg` reports of connection settings: the status is kept, and the hash it names is the
    one the agent holds (`on_settings_report`)."""
    if msg.HasField("connection_settings_status"):
        reported = msg.connection_settings_status.SerializeToString(deterministic=True)
        if reported != state.connection_settings_status:
            # Kept as reported, to show in the agent's JSON (status compression: only when sent).
            state = state.updated(connection_settings_status=reported)
            changed.add("connection_settings_status")
        state = on_settings_report(state, msg.connection_settings_status, changed)
    return state


def on_settings_report(
    state: AgentState, status: pb.ConnectionSettingsStatus, changed: set[str]
) -> AgentState:
    """A `connection_settings_status` (agents with ReportsConnectionSettingsStatus): the hash the
    agent reports is the one it holds, so the offer is due when that is not the current one. FAILED
    changes nothing (the offer it failed on is not sent again in a loop), nor does APPLYING (the
    agent is still on its way to the settings it got)."""
    if status.status in _UNSETTLED:
        return state
    held = status.last_connection_settings_hash or None
    if held == state.offered_settings_hash:
        return state
    changed.add("offered_settings_hash")
    return state.updated(offered_settings_hash=held)
