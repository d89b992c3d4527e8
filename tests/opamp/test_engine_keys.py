"""Agent keys are a boundary: the engine's rule (docs/security.md, issue 20 finding 1)."""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings, strategies as st

from gateway.fleet.agent import AgentState
from gateway.opamp import capabilities as caps
from gateway.opamp.engine import FleetView, Outcome, handle, may_speak_for
from gateway.proto import opamp_pb2 as pb
from tests.opamp.test_engine import FLEET, NOW, UID, full_report, heartbeat
from tests.support.messages import agent_to_server

NEW_UID = b"\xaa" * 16


def _mint() -> bytes:
    return NEW_UID


def run(
    state: AgentState | None, msg: pb.AgentToServer, key_id: str | None, fleet: FleetView = FLEET
) -> Outcome:
    return handle(state, msg, fleet, NOW, _mint, key_id=key_id)


def bound(key_id: str, **overrides: object) -> AgentState:
    outcome = run(None, full_report(0), key_id)
    assert outcome.state is not None
    return replace(outcome.state, **overrides)  # type: ignore[arg-type]


def test_a_new_agent_is_bound_to_the_key_that_enrolled_it() -> None:
    outcome = run(None, full_report(0), "edge-eu")
    assert outcome.event == "enrolled" and outcome.durable
    assert outcome.state is not None and outcome.state.key_id == "edge-eu"
    assert outcome.write is not None and outcome.write.state.key_id == "edge-eu"


def test_without_agent_keys_an_agent_is_bound_to_none() -> None:
    outcome = run(None, full_report(0), None)
    assert outcome.state is not None and outcome.state.key_id == ""


@pytest.mark.parametrize(
    "msg",
    [
        heartbeat(1),
        full_report(1),
        pb.AgentToServer(instance_uid=UID, sequence_num=1, agent_disconnect=pb.AgentDisconnect()),
        pb.AgentToServer(instance_uid=UID, sequence_num=1, flags=caps.REQUEST_INSTANCE_UID),
        pb.AgentToServer(
            instance_uid=UID,
            sequence_num=1,
            remote_config_status=pb.RemoteConfigStatus(status=pb.RemoteConfigStatuses_FAILED),
        ),
    ],
    ids=["heartbeat", "description", "disconnect", "request-instance-uid", "config-status"],
)
def test_another_key_cannot_speak_for_a_bound_agent(msg: pb.AgentToServer) -> None:
    state = bound("edge-eu", pending_command=pb.CommandType_Restart)
    outcome = run(state, msg, "edge-us")
    assert outcome.forbidden and not outcome.rejected
    # Nothing is stored, nothing is sent: no config, no command, no new uid.
    assert outcome.write is None and outcome.state is None and not outcome.durable
    reply = outcome.reply
    assert not reply.HasField("remote_config") and not reply.HasField("command")
    assert not reply.HasField("agent_identification")
    assert reply.error_response.type == pb.ServerErrorResponseType_BadRequest


def test_the_same_key_speaks_for_its_agent_on_the_fast_path() -> None:
    state = bound("edge-eu")
    outcome = run(state, heartbeat(1), "edge-eu")
    assert outcome.event == "heartbeat" and outcome.state is not None
    assert outcome.state.key_id == "edge-eu"


def test_a_new_uid_keeps_the_key() -> None:
    state = bound("edge-eu")
    msg = pb.AgentToServer(instance_uid=UID, sequence_num=1, flags=caps.REQUEST_INSTANCE_UID)
    outcome = run(state, msg, "edge-eu")
    assert outcome.event == "moved"
    assert outcome.state is not None and outcome.state.instance_uid == NEW_UID
    assert outcome.state.key_id == "edge-eu"
    assert outcome.write is not None and "key_id" not in outcome.write.changed


def test_a_temporary_uid_asking_for_a_new_one_is_bound_to_its_key() -> None:
    msg = pb.AgentToServer(instance_uid=b"tmp", flags=caps.REQUEST_INSTANCE_UID)
    outcome = run(None, msg, "edge-eu")
    assert outcome.state is not None and (outcome.state.instance_uid, outcome.state.key_id) == (
        NEW_UID,
        "edge-eu",
    )


def test_the_old_uid_of_a_moved_agent_is_still_its_keys_alone() -> None:
    state = bound("edge-eu", instance_uid=NEW_UID, previous_instance_uids=(UID,))
    assert run(state, heartbeat(1), "edge-us").forbidden
    outcome = run(state, heartbeat(1), "edge-eu")
    assert outcome.reply.agent_identification.new_instance_uid == NEW_UID


def test_an_anonymous_agent_is_adopted_by_the_first_key_that_speaks_for_it() -> None:
    state = bound("", sequence_num=0)
    outcome = run(state, heartbeat(1), "edge-eu")
    assert outcome.event == "reported" and outcome.durable
    assert outcome.state is not None and outcome.state.key_id == "edge-eu"
    assert outcome.write is not None and "key_id" in outcome.write.changed
    # From then on it is that key's.
    assert run(outcome.state, heartbeat(2), "edge-us").forbidden


def test_with_agent_keys_off_any_client_speaks_for_any_agent() -> None:
    state = bound("edge-eu")
    outcome = run(state, heartbeat(1), None)
    assert outcome.event == "heartbeat"
    assert outcome.state is not None and outcome.state.key_id == "edge-eu"


@pytest.mark.parametrize(
    ("bound_to", "key_id", "allowed"),
    [
        ("", None, True),
        ("", "a", True),
        ("a", None, True),
        ("a", "a", True),
        ("a", "b", False),
        ("sha256:0123456789ab", "sha256:0123456789ac", False),
    ],
)
def test_may_speak_for(bound_to: str, key_id: str | None, allowed: bool) -> None:
    state = AgentState(instance_uid=UID, enrolled_at=0.0, last_seen=0.0, key_id=bound_to)
    assert may_speak_for(state, key_id) is allowed


@settings(max_examples=300, deadline=None)
@given(agent_to_server(), st.sampled_from(["edge-eu", ""]))
def test_no_message_from_another_key_changes_a_bound_agent(msg: pb.AgentToServer, bound_to: str) -> None:
    msg.instance_uid = UID
    state = bound("edge-eu")
    outcome = run(state, msg, "edge-us")
    assert outcome.forbidden and outcome.write is None
    # An anonymous record is adopted rather than refused: it is bound to the key afterwards.
    anonymous = replace(state, key_id=bound_to)
    adopted = run(anonymous, msg, "edge-us")
    if bound_to == "":
        assert not adopted.forbidden
        assert adopted.state is None or adopted.state.key_id == "edge-us"
    else:
        assert adopted.forbidden
