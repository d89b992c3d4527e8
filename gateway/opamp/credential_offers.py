"""Offers of an agent's own credential in `connection_settings.opamp` (per-agent credentials).

Pure. With per-agent credentials on (the SettingsSet has a `credential_endpoint`, the
--public-opamp-url), an agent with AcceptsOpAMPConnectionSettings that is not revoked is *eligible*:
its ConnectionSettingsOffers carries, besides the operator's parts (gateway/opamp/connection_offers.py),
`opamp{destination_endpoint, headers: Authorization: Bearer <credential>, heartbeat_interval_seconds}`.
Its `hash` is computed over the reference form of the offer (the credential named by its digest,
connection_offers.CredentialOffer), so it is the same on every node and at every message, and the
usual rule holds: the offer goes out when its hash is not the one the agent last got
(heartbeat.py). A secret is never stored, so the `opamp` part can be sent only together with a
credential minted for that very offer. A new credential is minted when:

- the agent has none yet (it enrolled with a shared key, or an operator let a revoked one back);
- an operator asked for one (rotate);
- the `opamp` settings changed since its newest credential was minted (another --public-opamp-url,
  or heartbeat interval): the agent holds them with that credential, only a new one can carry them;
- its newest credential is still pending (never used) and an offer is due anyway: the agent lacks
  something, possibly that very credential (a lost reply, or a reported hash that is not ours).

Otherwise an offer that is due (the operator's parts changed) leaves `opamp` out: the spec says an
unset `opamp` means "unchanged", and the agent proved by connecting with it that it holds its
credential. Its hash still covers the `opamp` part, so it stays the hash of everything the agent
holds.

The agent switches by connecting with the new credential (its first use makes it the active one,
gateway/fleet/credentials.py), or says it applied the offer that carried it (ReportsConnectionSettings
Status: APPLIED with that offer's hash). Until then the credential in force before (the shared key, or
the previous own credential) stays accepted: an agent that never switches keeps working with it, and
its pending credential stays valid for when it does. FAILED or APPLYING reports change nothing (no
offer loop). An agent on its own credential that is no longer eligible (the gateway was switched back
to shared credentials, or it no longer accepts opamp settings) gets offers without `opamp`, so its
credential is never taken away by an offer.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

from gateway.fleet.agent import AgentState
from gateway.fleet.credentials import AgentCredential, Minted, activated
from gateway.opamp import capabilities as caps, heartbeat
from gateway.opamp.connection_offers import AUTHORIZATION, SettingsSet
from gateway.proto import opamp_pb2 as pb

Mint = Callable[[bytes], Minted]


def eligible(state: AgentState, record: AgentCredential | None, settings: SettingsSet) -> bool:
    """Whether the agent is offered a credential of its own (and the `opamp` settings that carry it)."""
    return (
        bool(settings.credential_endpoint)
        and bool(state.capabilities & caps.ACCEPTS_OPAMP_CONNECTION_SETTINGS)
        and not (record is not None and record.revoked)
    )


def mint_needed(state: AgentState, record: AgentCredential | None, settings: SettingsSet) -> bool:
    """Whether an eligible agent must get a new credential now (the rules in this module's doc)."""
    newest = None if record is None else record.newest
    if record is None or newest is None or record.rotate:
        return True
    reference = settings.credential_offer_for(state, newest)
    if reference.opamp_hash != record.opamp_hash:
        return True
    return record.pending is not None and reference.offer.hash != state.offered_settings_hash


def plain_offer(
    state: AgentState, record: AgentCredential | None, settings: SettingsSet
) -> pb.ConnectionSettingsOffers | None:
    """The offer for an agent that is not eligible: the usual one, or for an agent on its own
    credential, the usual one without `opamp`."""
    if not settings.offers_any:
        return None
    if record is not None and record.active is not None:
        return settings.offer_without_opamp(state)
    return settings.offer_for(state)


def due(state: AgentState, record: AgentCredential | None, settings: SettingsSet) -> bool:
    """Whether `offer` would put anything into a message to the agent now (the engine's heartbeat
    fast path and the node's pushes ask this; cached offers make it a few dict lookups)."""
    if not eligible(state, record, settings):
        return heartbeat.settings_due(state, plain_offer(state, record, settings))
    if mint_needed(state, record, settings):
        return True
    assert record is not None and record.newest is not None
    return settings.credential_offer_for(state, record.newest).offer.hash != state.offered_settings_hash


def applied(
    state: AgentState,
    msg: pb.AgentToServer,
    record: AgentCredential | None,
    settings: SettingsSet,
    now: float,
) -> AgentCredential | None:
    """The record once `msg` is read: an agent that reports APPLIED for the offer that carried its
    pending credential holds it, so that one becomes the active one (the one before is refused)."""
    if record is None or record.pending is None or not msg.HasField("connection_settings_status"):
        return record
    status = msg.connection_settings_status
    if status.status != pb.ConnectionSettingsStatuses_APPLIED or not settings.credential_endpoint:
        return record
    carried = settings.credential_offer_for(state, record.pending).offer.hash
    if status.last_connection_settings_hash != carried:
        return record
    return activated(record, record.pending, now)


def reveal(offer: pb.ConnectionSettingsOffers, token: str) -> None:
    """Put the credential itself where the reference-form offer names it."""
    for header in offer.opamp.headers.headers:
        if header.key == AUTHORIZATION:
            header.value = "Bearer " + token


def offer(
    state: AgentState,
    record: AgentCredential | None,
    settings: SettingsSet,
    reply: pb.ServerToAgent,
    changed: set[str],
    now: float,
    mint: Mint,
) -> tuple[AgentState, AgentCredential | None]:
    """Put the agent's connection settings offer into `reply` if it is due, minting a credential when
    the rules say so; the record and the credential record after it ("offered_settings_hash" is
    added to `changed` when an offer goes out). A minted credential is in `reply` only: the caller
    stores the new credential record before the reply is sent, or does not send it."""
    if not eligible(state, record, settings):
        return heartbeat.offer_settings(state, plain_offer(state, record, settings), reply, changed), record
    if mint_needed(state, record, settings):
        minted = mint(state.instance_uid)
        reference = settings.credential_offer_for(state, minted.digest)
        record = replace(
            record or AgentCredential(),
            pending=minted.digest,
            opamp_hash=reference.opamp_hash,
            rotate=False,
            updated_at=now,
        )
        reply.connection_settings.CopyFrom(reference.offer)
        reveal(reply.connection_settings, minted.token)
        changed.add("offered_settings_hash")
        return state.updated(offered_settings_hash=reference.offer.hash), record
    assert record is not None and record.newest is not None
    reference = settings.credential_offer_for(state, record.newest)
    if reference.offer.hash == state.offered_settings_hash:
        return state, record
    # Only an active credential gets here (a pending one with an offer due is minted anew above):
    # the agent holds its `opamp` settings already.
    reply.connection_settings.CopyFrom(reference.offer)
    reply.connection_settings.ClearField("opamp")
    changed.add("offered_settings_hash")
    return state.updated(offered_settings_hash=reference.offer.hash), record


def settle(
    state: AgentState,
    msg: pb.AgentToServer,
    record: AgentCredential | None,
    settings: SettingsSet,
    reply: pb.ServerToAgent,
    changed: set[str],
    disconnecting: bool,
    now: float,
    mint: Mint,
) -> tuple[AgentState, AgentCredential | None]:
    """The engine's step for connection settings (heartbeat.settle, with per-agent credentials): what
    `msg` reports of them, then the offer if it is due (not in the reply to a goodbye)."""
    state = heartbeat.report(state, msg, changed)
    record = applied(state, msg, record, settings, now)
    if disconnecting:
        return state, record
    return offer(state, record, settings, reply, changed, now, mint)
