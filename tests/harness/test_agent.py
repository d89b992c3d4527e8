"""The simulated agent's protocol behaviour, one rule at a time, without sockets."""

from __future__ import annotations

from gateway.proto import opamp_pb2 as pb
from harness.agent import (
    CAPABILITIES,
    CHANGED_AT_MARKER,
    COLLECTOR_CAPABILITIES,
    SERVICE_NAME,
    Look,
    SimAgent,
    changed_at,
    new_uid,
    reply_problem,
)


def _config(body: bytes, config_hash: bytes = b"h1") -> pb.AgentRemoteConfig:
    config = pb.AgentRemoteConfig(config_hash=config_hash)
    config.config.config_map["collector.yaml"].body = body
    return config


def test_uids_are_uuid_v7_and_distinct() -> None:
    uids = {new_uid() for _ in range(1000)}
    assert len(uids) == 1000
    for uid in list(uids)[:20]:
        assert len(uid) == 16 and uid[6] >> 4 == 7 and uid[8] >> 6 == 0b10


def test_first_message_is_a_full_report_then_heartbeats_count_up() -> None:
    agent = SimAgent(index=3)
    name, first = agent.next_message()
    assert name == "full report" and first.sequence_num == 0 and first.capabilities == CAPABILITIES
    identifying = {kv.key: kv.value.string_value for kv in first.agent_description.identifying_attributes}
    assert identifying["service.name"] == SERVICE_NAME
    assert first.HasField("health") and first.HasField("effective_config")
    assert not first.flags
    for seq in (1, 2, 3):
        name, beat = agent.next_message()
        assert name == "heartbeat" and beat.sequence_num == seq
        assert beat.instance_uid == agent.uid and not beat.HasField("agent_description")


def test_a_uid_requesting_agent_flags_only_its_first_report() -> None:
    agent = SimAgent(index=0, request_uid=True)
    assert agent.next_message()[1].flags == pb.AgentToServerFlags_RequestInstanceUid
    agent.full_report_due = True
    assert agent.next_message()[1].flags == 0


def test_adopts_new_instance_uid() -> None:
    agent = SimAgent(index=0)
    agent.next_message()
    reply = pb.ServerToAgent(instance_uid=agent.uid)
    reply.agent_identification.new_instance_uid = b"\x01" * 16
    reaction = agent.react(reply)
    assert agent.uid == b"\x01" * 16 and reaction.send == []
    assert agent.next_message()[1].instance_uid == b"\x01" * 16


def test_report_full_state_is_answered_at_once() -> None:
    agent = SimAgent(index=0)
    agent.next_message()
    reaction = agent.react(pb.ServerToAgent(flags=pb.ServerToAgentFlags_ReportFullState))
    [(name, msg)] = reaction.send
    assert name == "full report" and msg.HasField("agent_description") and msg.sequence_num == 1


def test_a_config_is_reported_applying_then_applied_with_its_effective_config() -> None:
    agent = SimAgent(index=0)
    agent.next_message()
    reply = pb.ServerToAgent(remote_config=_config(b"receivers: {}\n"))
    reaction = agent.react(reply, now=100.0)
    (first_name, applying), (second_name, applied) = reaction.send
    assert (first_name, second_name) == ("config applying", "config applied")
    assert applying.remote_config_status.status == pb.RemoteConfigStatuses_APPLYING
    assert applied.remote_config_status.status == pb.RemoteConfigStatuses_APPLIED
    assert applying.remote_config_status.last_remote_config_hash == b"h1"
    assert (applying.sequence_num, applied.sequence_num) == (1, 2)
    assert applied.effective_config.config_map.config_map["collector.yaml"].body == b"receivers: {}\n"
    assert reaction.applied == (b"h1", None)
    # The same config again (an offer repeated after a timeout) is not applied twice.
    assert agent.react(reply).send == []
    # A later full report carries the applied hash.
    agent.full_report_due = True
    report = agent.next_message()[1]
    assert report.remote_config_status.last_remote_config_hash == b"h1"


def test_convergence_is_measured_from_the_marker_in_the_body() -> None:
    body = b"# " + CHANGED_AT_MARKER[2:] + b"90.5\nreceivers: {}\n"
    assert changed_at(_config(body)) == 90.5
    assert changed_at(_config(b"receivers: {}\n")) is None
    assert changed_at(_config(CHANGED_AT_MARKER + b"not-a-time\n")) is None
    reaction = SimAgent(index=0).react(pb.ServerToAgent(remote_config=_config(body, b"h2")), now=100.0)
    assert reaction.applied == (b"h2", 9.5)


def test_unavailable_with_retry_info_says_when_to_retry_and_resends_in_full() -> None:
    agent = SimAgent(index=0)
    agent.next_message()
    agent.next_message()
    reply = pb.ServerToAgent()
    reply.error_response.type = pb.ServerErrorResponseType_Unavailable
    reply.error_response.error_message = "too many"
    reply.error_response.retry_info.retry_after_nanoseconds = 2_500_000_000
    reaction = agent.react(reply)
    assert reaction.retry_after == 2.5 and reaction.error == "too many" and reaction.send == []
    assert agent.next_message()[0] == "full report"


def test_unavailable_without_retry_info_waits_a_second_and_bad_request_not_at_all() -> None:
    agent = SimAgent(index=0)
    unavailable = pb.ServerToAgent()
    unavailable.error_response.type = pb.ServerErrorResponseType_Unavailable
    assert agent.react(unavailable).retry_after == 1.0
    bad = pb.ServerToAgent()
    bad.error_response.type = pb.ServerErrorResponseType_BadRequest
    reaction = agent.react(bad)
    assert reaction.retry_after is None and reaction.error == "ServerErrorResponseType_BadRequest"


def test_restart_command_is_noticed() -> None:
    reply = pb.ServerToAgent()
    reply.command.type = pb.CommandType_Restart
    assert SimAgent(index=0).react(reply).restart is True


def test_goodbye_is_an_agent_disconnect() -> None:
    agent = SimAgent(index=0)
    agent.next_message()
    goodbye = agent.goodbye()
    assert goodbye.HasField("agent_disconnect") and goodbye.sequence_num == 1


def test_a_look_sets_the_host_name_the_config_and_the_pipelines_health() -> None:
    look = Look(host_name="host-{index:03d}", config=b"x: 1\n", pipelines=("traces", "logs"))
    report = SimAgent(index=7, look=look, capabilities=COLLECTOR_CAPABILITIES).full_report()
    attributes = {kv.key: kv.value.string_value for kv in report.agent_description.non_identifying_attributes}
    assert attributes["host.name"] == "host-007"
    assert report.effective_config.config_map.config_map[""].body == b"x: 1\n"
    assert set(report.health.component_health_map) == {"pipeline:traces", "pipeline:logs"}
    assert report.capabilities == COLLECTOR_CAPABILITIES


def test_a_config_status_is_the_next_message_carrying_it() -> None:
    agent = SimAgent(index=0)
    agent.next_message()
    status = agent.config_status(b"h1", pb.RemoteConfigStatuses_FAILED)
    assert status.sequence_num == 1 and not status.HasField("agent_description")
    assert status.remote_config_status.last_remote_config_hash == b"h1"
    assert status.remote_config_status.status == pb.RemoteConfigStatuses_FAILED


def test_reply_problem_names_what_a_settled_agent_must_not_get() -> None:
    uid = new_uid()
    assert reply_problem(pb.ServerToAgent(instance_uid=uid), uid) is None
    error = pb.ServerToAgent(instance_uid=uid)
    error.error_response.error_message = "store down"
    assert reply_problem(error, uid) == ("error_response", "store down")
    full_state = pb.ServerToAgent(instance_uid=uid, flags=pb.ServerToAgentFlags_ReportFullState)
    assert reply_problem(full_state, uid) == ("full_state", "ReportFullState requested")
    assert reply_problem(pb.ServerToAgent(instance_uid=b"\x01" * 16), uid)[0] == "wrong_uid"  # type: ignore[index]
    assert reply_problem(pb.ServerToAgent(instance_uid=b"\x01" * 16), None) is None


def test_reproducible_uids_differ_only_in_their_timestamp() -> None:
    first, second = new_uid(bytes(10)), new_uid(bytes(10))
    assert first[6:] == second[6:] == bytes([0x70, 0, 0x80]) + bytes(7)
