"""Push decisions for an agent held on a socket: pure, the engine's own config and command rules."""

from __future__ import annotations

from dataclasses import replace

from gateway.fleet.agent import AgentState
from gateway.opamp import capabilities as caps
from gateway.opamp.engine import FleetView
from gateway.opamp.push import command_push, config_due, config_push
from gateway.proto import opamp_pb2 as pb
from tests.opamp.test_engine import NOW, UID, full_report
from tests.opamp.test_engine_config import FLEET, HASH, RESEND, run, status

RESTART = pb.CommandType_Restart


def held(capabilities: int = caps.REPORTS_STATUS | caps.ACCEPTS_REMOTE_CONFIG) -> AgentState:
    """An agent as a connection holds it after its first message to a fleet without configs."""
    outcome = run(None, full_report(0, capabilities=capabilities), FleetView(config_resend_after=RESEND))
    assert outcome.state is not None and outcome.state.offered_config_hash is None
    return outcome.state


def test_a_config_push_carries_the_offer_and_the_record_remembers_it() -> None:
    state = held()
    assert config_due(state, FLEET, NOW)
    push = config_push(state, FLEET, NOW)
    assert push is not None
    assert push.reply.instance_uid == UID and push.reply.capabilities == FLEET.server_capabilities
    assert push.reply.remote_config.config_hash == HASH
    assert (push.state.offered_config_hash, push.state.offered_at) == (HASH, NOW)
    assert push.write.changed == {"offered_config_hash"} and not push.durable


def test_no_config_push_the_engine_would_not_offer() -> None:
    pushed = config_push(
        held(caps.REPORTS_STATUS | caps.ACCEPTS_REMOTE_CONFIG | caps.REPORTS_REMOTE_CONFIG), FLEET, NOW
    )
    assert pushed is not None
    # Waiting for a report on the same offer, until the resend timeout.
    assert config_push(pushed.state, FLEET, NOW + RESEND - 1) is None
    assert not config_due(pushed.state, FLEET, NOW + RESEND - 1)
    assert config_push(pushed.state, FLEET, NOW + RESEND) is not None
    # Applied already, not accepting remote config, or no config at all.
    applied = replace(held(), remote_config_status=status(HASH).SerializeToString(deterministic=True))
    assert config_push(applied, FLEET, NOW) is None
    assert config_push(held(caps.REPORTS_STATUS), FLEET, NOW) is None
    assert config_push(held(), FleetView(), NOW) is None


def test_a_command_push_travels_alone_and_clears_the_pending_copy_durably() -> None:
    state = replace(held(caps.REPORTS_STATUS | caps.ACCEPTS_RESTART_COMMAND), pending_command=RESTART)
    push = command_push(state, RESTART, FLEET)
    assert push is not None
    assert {f.name for f, _ in push.reply.ListFields()} == {"instance_uid", "capabilities", "command"}
    assert push.reply.command.type == RESTART
    assert push.state.pending_command is None
    assert push.write.changed == {"pending_command"} and push.durable


def test_no_command_push_to_an_agent_that_does_not_accept_it() -> None:
    assert command_push(held(caps.REPORTS_STATUS), RESTART, FLEET) is None
