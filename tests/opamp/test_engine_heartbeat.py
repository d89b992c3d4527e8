"""The heartbeat interval offer (gateway/opamp/heartbeat.py) as the engine applies it: offered once to
agents with ReportsHeartbeat and AcceptsOpAMPConnectionSettings, not again, again when the interval
changes or the agent reports other settings, never with 0; and the server capabilities that go
with it."""

from __future__ import annotations

from dataclasses import replace

import pytest

from gateway.fleet.agent import AgentState
from gateway.opamp import capabilities as caps, heartbeat
from gateway.opamp.connection_offers import SettingsSet
from gateway.opamp.engine import FleetView, Outcome, handle
from gateway.proto import opamp_pb2 as pb
from tests.opamp.test_engine import NOW, full_report, heartbeat as heartbeat_msg

BASE = caps.REPORTS_STATUS | caps.ACCEPTS_REMOTE_CONFIG
WANTS = BASE | caps.REPORTS_HEARTBEAT | caps.ACCEPTS_OPAMP_CONNECTION_SETTINGS


def _fleet(interval: int) -> FleetView:
    offer = heartbeat.settings_offer(interval)
    return FleetView(
        server_capabilities=caps.server_capabilities(offer is not None),
        settings=SettingsSet(heartbeat_offer=offer),
    )


def _no_mint() -> bytes:
    raise AssertionError("no uid should be minted")


def _run(state: AgentState | None, msg: pb.AgentToServer, fleet: FleetView) -> Outcome:
    return handle(state, msg, fleet, NOW, _no_mint)


def _enrolled(fleet: FleetView, capabilities: int = WANTS) -> Outcome:
    return _run(None, full_report(0, capabilities=capabilities), fleet)


def _record(fleet: FleetView, capabilities: int = WANTS) -> AgentState:
    state = _enrolled(fleet, capabilities).state
    assert state is not None
    return state


def _interval(reply: pb.ServerToAgent) -> int | None:
    if not reply.HasField("connection_settings"):
        return None
    assert reply.connection_settings.HasField("opamp")
    return reply.connection_settings.opamp.heartbeat_interval_seconds


def test_the_offer_carries_the_interval_and_a_hash_that_follows_it() -> None:
    offer = heartbeat.settings_offer(45)
    assert offer is not None
    assert offer.opamp.heartbeat_interval_seconds == 45
    assert len(offer.hash) == 32
    # Stable: the same interval gives the same hash on every node and after every restart.
    assert offer == heartbeat.settings_offer(45)
    other = heartbeat.settings_offer(46)
    assert other is not None and other.hash != offer.hash
    # Nothing else is offered: no endpoint to reconnect to, no credentials.
    assert [f.name for f, _ in offer.opamp.ListFields()] == ["heartbeat_interval_seconds"]
    assert heartbeat.settings_offer(0) is None


def test_offered_once_then_not_again() -> None:
    fleet = _fleet(60)
    first = _enrolled(fleet)
    assert _interval(first.reply) == 60
    assert first.state is not None and first.write is not None
    assert first.state.offered_settings_hash == first.reply.connection_settings.hash
    assert "offered_settings_hash" in first.write.changed
    state = first.state
    for seq in range(1, 4):
        outcome = _run(state, heartbeat_msg(seq, capabilities=WANTS), fleet)
        assert not outcome.reply.HasField("connection_settings")
        assert outcome.event == "heartbeat"
        assert outcome.state is not None
        state = outcome.state


def test_a_reconnect_or_a_gap_does_not_repeat_it() -> None:
    """An agent applies OpAMP settings by reconnecting with a new client (spec 8.1): repeating the
    offer on its new connection or its new sequence would loop."""
    fleet = _fleet(60)
    state = _enrolled(fleet).state
    assert state is not None
    gap = _run(state, heartbeat_msg(1, capabilities=WANTS), fleet)
    again = _run(gap.state, heartbeat_msg(0, capabilities=WANTS), fleet)
    assert again.reply.flags & caps.REPORT_FULL_STATE
    assert not again.reply.HasField("connection_settings")


def test_offered_again_when_the_interval_changes() -> None:
    state = _enrolled(_fleet(60)).state
    assert state is not None
    outcome = _run(state, heartbeat_msg(1, capabilities=WANTS), _fleet(120))
    assert _interval(outcome.reply) == 120
    assert outcome.state is not None
    assert (
        _run(outcome.state, heartbeat_msg(2, capabilities=WANTS), _fleet(120)).reply.HasField(
            "connection_settings"
        )
        is False
    )


@pytest.mark.parametrize(
    "capabilities",
    [BASE, BASE | caps.REPORTS_HEARTBEAT, BASE | caps.ACCEPTS_OPAMP_CONNECTION_SETTINGS],
    ids=["neither", "no AcceptsOpAMPConnectionSettings", "no ReportsHeartbeat"],
)
def test_not_offered_without_both_capabilities(capabilities: int) -> None:
    outcome = _enrolled(_fleet(60), capabilities)
    assert not outcome.reply.HasField("connection_settings")
    assert outcome.state is not None and outcome.state.offered_settings_hash is None


def test_offered_once_the_agent_reports_both_capabilities() -> None:
    fleet = _fleet(60)
    state = _enrolled(fleet, BASE | caps.REPORTS_HEARTBEAT).state
    outcome = _run(state, heartbeat_msg(1, capabilities=WANTS), fleet)
    assert _interval(outcome.reply) == 60


def test_zero_offers_nothing_and_advertises_no_connection_settings() -> None:
    fleet = _fleet(0)
    outcome = _enrolled(fleet)
    assert not outcome.reply.HasField("connection_settings")
    assert outcome.reply.capabilities == caps.SERVER_CAPABILITIES
    assert not outcome.reply.capabilities & pb.ServerCapabilities_OffersConnectionSettings


def test_an_offering_server_advertises_offers_connection_settings() -> None:
    outcome = _enrolled(_fleet(30))
    assert (
        outcome.reply.capabilities
        == caps.SERVER_CAPABILITIES | pb.ServerCapabilities_OffersConnectionSettings
    )


def _status(state: AgentState, seq: int, hash_: bytes, status: int) -> pb.AgentToServer:
    msg = heartbeat_msg(seq, capabilities=state.capabilities)
    msg.connection_settings_status.last_connection_settings_hash = hash_
    msg.connection_settings_status.status = status  # type: ignore[assignment]
    return msg


def test_a_reported_other_hash_gets_the_offer_again() -> None:
    """Spec: when last_connection_settings_hash differs, the server MUST send the settings again."""
    fleet = _fleet(60)
    state = _enrolled(fleet, WANTS | caps.REPORTS_CONNECTION_SETTINGS_STATUS).state
    assert state is not None
    outcome = _run(state, _status(state, 1, b"\x07" * 32, pb.ConnectionSettingsStatuses_APPLIED), fleet)
    assert _interval(outcome.reply) == 60
    assert outcome.state is not None
    assert outcome.state.offered_settings_hash == outcome.reply.connection_settings.hash


def test_the_reported_offered_hash_needs_nothing() -> None:
    fleet = _fleet(60)
    assert fleet.settings.heartbeat_offer is not None
    # A record that forgot the offer (say, written before this feature) learns it from the report.
    state = replace(_record(fleet), offered_settings_hash=None)
    msg = _status(state, 1, fleet.settings.heartbeat_offer.hash, pb.ConnectionSettingsStatuses_APPLIED)
    outcome = _run(state, msg, fleet)
    assert not outcome.reply.HasField("connection_settings")
    assert outcome.state is not None
    assert outcome.state.offered_settings_hash == fleet.settings.heartbeat_offer.hash


@pytest.mark.parametrize(
    "status",
    [pb.ConnectionSettingsStatuses_FAILED, pb.ConnectionSettingsStatuses_APPLYING],
    ids=["failed", "applying"],
)
def test_failed_or_applying_is_not_answered_with_the_offer_again(status: int) -> None:
    fleet = _fleet(60)
    state = _enrolled(fleet).state
    assert state is not None
    outcome = _run(state, _status(state, 1, b"\x07" * 32, status), fleet)
    assert not outcome.reply.HasField("connection_settings")
    assert outcome.state is not None and outcome.state.offered_settings_hash == state.offered_settings_hash


def test_a_goodbye_gets_no_offer() -> None:
    fleet = _fleet(60)
    state = _enrolled(_fleet(30)).state
    msg = heartbeat_msg(1, capabilities=WANTS)
    msg.agent_disconnect.SetInParent()
    assert not _run(state, msg, fleet).reply.HasField("connection_settings")


def test_the_offer_waits_a_pending_command() -> None:
    """A command travels alone (spec 8.4): the offer goes first, the command in the next reply."""
    fleet = _fleet(60)
    state = replace(
        _record(_fleet(0), WANTS | caps.ACCEPTS_RESTART_COMMAND), pending_command=pb.CommandType_Restart
    )
    first = _run(state, heartbeat_msg(1, capabilities=state.capabilities), fleet)
    assert _interval(first.reply) == 60 and not first.reply.HasField("command")
    second = _run(first.state, heartbeat_msg(2, capabilities=state.capabilities), fleet)
    assert second.reply.HasField("command") and not second.reply.HasField("connection_settings")


def test_an_offer_due_leaves_the_fast_path() -> None:
    from gateway.opamp import engine

    state = _enrolled(_fleet(30)).state
    assert state is not None
    assert engine._heartbeat(state, heartbeat_msg(1, capabilities=WANTS), _fleet(60), NOW) is None
    assert engine._heartbeat(state, heartbeat_msg(1, capabilities=WANTS), _fleet(30), NOW) is not None


def test_heartbeats_expected() -> None:
    assert heartbeat.heartbeats_expected(0)
    assert heartbeat.heartbeats_expected(BASE | caps.REPORTS_HEARTBEAT)
    assert not heartbeat.heartbeats_expected(BASE)
