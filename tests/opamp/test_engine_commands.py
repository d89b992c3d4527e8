"""Pending ServerToAgentCommands in the engine (spec 8.4: a command travels alone)."""

from __future__ import annotations

from gateway.fleet.agent import AgentState
from gateway.opamp import capabilities as caps, engine
from gateway.proto import anyvalue_pb2 as av, opamp_pb2 as pb

UID = bytes(range(16))
NEW_UID = bytes(range(16, 32))
NOW = 1_700_000_000.0
FLEET = engine.FleetView()
CAPS = caps.REPORTS_STATUS | caps.ACCEPTS_RESTART_COMMAND
RESTART = pb.CommandType_Restart


def known(pending: int | None = RESTART, capabilities: int = CAPS, seq: int = 4) -> AgentState:
    description = pb.AgentDescription()
    description.identifying_attributes.add(key="service.name", value=av.AnyValue(string_value="otelcol"))
    return AgentState(
        instance_uid=UID,
        enrolled_at=NOW - 100,
        last_seen=NOW - 30,
        sequence_num=seq,
        capabilities=capabilities,
        description=description.SerializeToString(deterministic=True),
        pending_command=pending,
    )


def poll(seq: int = 5, capabilities: int = CAPS, flags: int = 0) -> pb.AgentToServer:
    return pb.AgentToServer(instance_uid=UID, sequence_num=seq, capabilities=capabilities, flags=flags)


def handle(state: AgentState | None, msg: pb.AgentToServer) -> engine.Outcome:
    return engine.handle(state, msg, FLEET, NOW, lambda: NEW_UID)


def fields(reply: pb.ServerToAgent) -> set[str]:
    return {f.name for f, _ in reply.ListFields()}


def test_pending_command_goes_out_in_a_quiet_reply_and_is_cleared_durably() -> None:
    outcome = handle(known(), poll())
    assert outcome.reply.HasField("command") and outcome.reply.command.type == RESTART
    assert fields(outcome.reply) == {"instance_uid", "capabilities", "command"}
    assert outcome.state is not None and outcome.state.pending_command is None
    assert outcome.write is not None and "pending_command" in outcome.write.changed
    assert outcome.durable
    # The wire bytes carry the all-default sub-message (Restart is 0): presence survives a round trip.
    assert pb.ServerToAgent.FromString(outcome.reply.SerializeToString()).HasField("command")


def test_delivered_once() -> None:
    first = handle(known(), poll(5))
    assert first.state is not None
    second = handle(first.state, poll(6))
    assert not second.reply.HasField("command")
    assert second.write is not None and "pending_command" not in second.write.changed


def test_waits_while_the_reply_asks_for_full_state() -> None:
    outcome = handle(known(seq=4), poll(seq=9))  # a gap: ReportFullState
    assert outcome.reply.flags & caps.REPORT_FULL_STATE
    assert not outcome.reply.HasField("command")
    assert outcome.state is not None and outcome.state.pending_command == RESTART
    assert outcome.write is not None and "pending_command" not in outcome.write.changed


def test_waits_while_the_reply_assigns_a_new_uid() -> None:
    outcome = handle(known(), poll(flags=caps.REQUEST_INSTANCE_UID))
    assert outcome.reply.agent_identification.new_instance_uid == NEW_UID
    assert not outcome.reply.HasField("command")
    assert outcome.state is not None and outcome.state.pending_command == RESTART


def test_not_sent_to_an_agent_that_is_leaving() -> None:
    goodbye = poll()
    goodbye.agent_disconnect.SetInParent()
    outcome = handle(known(), goodbye)
    assert not outcome.reply.HasField("command")
    assert outcome.state is not None and outcome.state.pending_command == RESTART


def test_dropped_when_the_agent_stops_accepting_restarts() -> None:
    outcome = handle(known(), poll(capabilities=caps.REPORTS_STATUS))
    assert not outcome.reply.HasField("command")
    assert outcome.state is not None and outcome.state.pending_command is None
    assert outcome.write is not None and "pending_command" in outcome.write.changed


def test_bare_poll_without_capabilities_keeps_the_stored_ones() -> None:
    # capabilities 0 means "not reported" (a bare poll), so the stored AcceptsRestartCommand counts.
    outcome = handle(known(), poll(capabilities=0))
    assert outcome.reply.HasField("command")


def test_nothing_pending_nothing_sent() -> None:
    outcome = handle(known(pending=None), poll())
    assert not outcome.reply.HasField("command")
    assert outcome.write is not None and "pending_command" not in outcome.write.changed


def test_rejected_message_carries_no_command() -> None:
    bad = poll()
    bad.instance_uid = b"short"
    outcome = handle(known(), bad)
    assert outcome.rejected and not outcome.reply.HasField("command")


def test_command_message_is_alone() -> None:
    reply = engine.command_message(UID, RESTART, FLEET)
    assert fields(reply) == {"instance_uid", "capabilities", "command"}
    assert reply.capabilities == FLEET.server_capabilities
    parsed = pb.ServerToAgent.FromString(reply.SerializeToString())
    assert parsed.HasField("command") and parsed.command.type == RESTART


def test_accepts_command() -> None:
    assert engine.accepts_command(known(), RESTART)
    assert not engine.accepts_command(known(capabilities=caps.REPORTS_STATUS), RESTART)
    assert not engine.accepts_command(known(), 7)  # a command type this gateway does not know
