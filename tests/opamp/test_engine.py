from __future__ import annotations

import itertools
from collections.abc import Callable

import pytest

from gateway.fleet.agent import AgentState
from gateway.opamp import capabilities as caps
from gateway.opamp.engine import FleetView, Outcome, handle
from gateway.proto import anyvalue_pb2 as av, opamp_pb2 as pb

NOW = 1_700_000_000.0
UID = bytes(range(16))
FLEET = FleetView()
REPORTING = caps.REPORTS_STATUS | caps.ACCEPTS_REMOTE_CONFIG | caps.REPORTS_HEARTBEAT


@pytest.fixture
def minted() -> Callable[[], bytes]:
    counter = itertools.count(1)
    return lambda: bytes([0xAA] * 15 + [next(counter)])


def description(name: str = "otelcol-contrib", version: str = "0.120.0") -> pb.AgentDescription:
    desc = pb.AgentDescription()
    for key, value in (("service.name", name), ("service.version", version)):
        desc.identifying_attributes.add(key=key, value=av.AnyValue(string_value=value))
    desc.non_identifying_attributes.add(key="os.type", value=av.AnyValue(string_value="linux"))
    return desc


def full_report(seq: int = 0, uid: bytes = UID, capabilities: int = REPORTING) -> pb.AgentToServer:
    return pb.AgentToServer(
        instance_uid=uid, sequence_num=seq, capabilities=capabilities, agent_description=description()
    )


def heartbeat(seq: int, uid: bytes = UID, capabilities: int = REPORTING) -> pb.AgentToServer:
    return pb.AgentToServer(instance_uid=uid, sequence_num=seq, capabilities=capabilities)


def run(
    state: AgentState | None,
    msg: pb.AgentToServer,
    mint: Callable[[], bytes] | None = None,
    now: float = NOW,
) -> Outcome:
    def _no_mint() -> bytes:
        raise AssertionError("no uid should be minted")

    return handle(state, msg, FLEET, now, mint or _no_mint)


def enrolled(seq: int = 0, **overrides: object) -> AgentState:
    outcome = run(None, full_report(seq))
    assert outcome.state is not None
    from dataclasses import replace

    return replace(outcome.state, **overrides)  # type: ignore[arg-type]


def error_of(outcome: Outcome) -> pb.ServerErrorResponse:
    assert outcome.reply.HasField("error_response")
    return outcome.reply.error_response


class TestBadInput:
    @pytest.mark.parametrize("length", [0, 1, 15, 17, 32])
    def test_uid_not_16_bytes_is_bad_request(self, length: int) -> None:
        msg = full_report(uid=b"\x01" * length)
        outcome = run(None, msg)
        err = error_of(outcome)
        assert err.type == pb.ServerErrorResponseType_BadRequest
        assert "16 bytes" in err.error_message
        assert outcome.write is None and outcome.state is None and outcome.rejected
        # instance_uid echoed even in an error; every later field unset.
        assert outcome.reply.instance_uid == msg.instance_uid
        assert outcome.reply.capabilities == 0 and outcome.reply.flags == 0

    def test_request_uid_with_disconnect_is_bad_request(self) -> None:
        msg = full_report()
        msg.flags = caps.REQUEST_INSTANCE_UID
        msg.agent_disconnect.SetInParent()
        outcome = run(enrolled(), msg)
        err = error_of(outcome)
        assert err.type == pb.ServerErrorResponseType_BadRequest
        assert "agent_disconnect" in err.error_message
        assert outcome.write is None
        assert not outcome.reply.HasField("agent_identification")


class TestEnrollment:
    def test_unknown_agent_enrolls_under_its_uid(self) -> None:
        outcome = run(None, full_report(seq=0))
        assert outcome.event == "enrolled" and outcome.durable
        assert outcome.state is not None and outcome.write is not None
        assert outcome.state.instance_uid == UID
        assert outcome.state.enrolled_at == NOW and outcome.state.last_seen == NOW
        assert outcome.state.description == description().SerializeToString(deterministic=True)
        assert outcome.state.capabilities == REPORTING
        assert "enrolled" in outcome.write.changed
        assert outcome.reply.instance_uid == UID
        assert not outcome.reply.HasField("error_response")
        assert not outcome.reply.HasField("agent_identification")

    def test_full_report_from_unknown_agent_needs_no_full_state(self) -> None:
        assert run(None, full_report()).reply.flags & caps.REPORT_FULL_STATE == 0

    def test_unknown_agent_without_description_is_enrolled_and_asked_for_full_state(self) -> None:
        outcome = run(None, heartbeat(7))
        assert outcome.event == "enrolled"
        assert outcome.reply.flags & caps.REPORT_FULL_STATE
        assert outcome.state is not None and outcome.state.description is None

    def test_request_uid_mints_uuid_and_echoes_received_uid(self, minted: Callable[[], bytes]) -> None:
        msg = full_report()
        msg.flags = caps.REQUEST_INSTANCE_UID
        outcome = run(None, msg, minted)
        new_uid = outcome.reply.agent_identification.new_instance_uid
        assert len(new_uid) == 16 and new_uid != UID
        assert outcome.reply.instance_uid == UID
        assert outcome.state is not None and outcome.state.instance_uid == new_uid
        assert outcome.state.previous_instance_uids == ()
        assert outcome.durable and outcome.event == "enrolled"

    def test_goodbye_from_stranger_enrolls_nothing(self) -> None:
        msg = heartbeat(3)
        msg.agent_disconnect.SetInParent()
        outcome = run(None, msg)
        assert outcome.write is None and outcome.state is None
        assert outcome.event == "disconnected"
        assert not outcome.reply.HasField("error_response")
        assert outcome.reply.flags == 0


class TestUidMove:
    def test_enrolled_agent_requesting_uid_moves_its_record(self, minted: Callable[[], bytes]) -> None:
        state = enrolled(seq=4, enrolled_at=NOW - 1000, remote_config_status=b"\x08\x01")
        msg = heartbeat(5)
        msg.flags = caps.REQUEST_INSTANCE_UID
        outcome = run(state, msg, minted, now=NOW + 5)
        new_uid = outcome.reply.agent_identification.new_instance_uid
        assert outcome.reply.instance_uid == UID
        moved = outcome.state
        assert moved is not None and moved.instance_uid == new_uid
        assert moved.enrolled_at == NOW - 1000
        assert moved.description == state.description
        assert moved.remote_config_status == b"\x08\x01"
        assert moved.previous_instance_uids == (UID,)
        assert outcome.write is not None and outcome.write.previous_uid == UID
        assert outcome.event == "moved" and outcome.durable

    def test_message_under_old_uid_is_routed_and_told_again(self) -> None:
        new_uid = b"\x77" * 16
        moved = enrolled(seq=5, instance_uid=new_uid, previous_instance_uids=(UID,))
        outcome = run(moved, heartbeat(6))
        assert outcome.reply.agent_identification.new_instance_uid == new_uid
        assert outcome.reply.instance_uid == UID
        assert outcome.state is not None and outcome.state.instance_uid == new_uid
        assert outcome.write is not None and outcome.write.previous_uid is None
        assert outcome.reply.flags & caps.REPORT_FULL_STATE == 0

    def test_repeated_request_under_old_uid_is_answered_with_same_uid(self) -> None:
        new_uid = b"\x77" * 16
        moved = enrolled(seq=5, instance_uid=new_uid, previous_instance_uids=(UID,))
        msg = heartbeat(6)
        msg.flags = caps.REQUEST_INSTANCE_UID
        outcome = run(moved, msg)  # no mint allowed
        assert outcome.reply.agent_identification.new_instance_uid == new_uid

    def test_message_under_new_uid_carries_no_identification(self) -> None:
        new_uid = b"\x77" * 16
        moved = enrolled(seq=5, instance_uid=new_uid, previous_instance_uids=(UID,))
        outcome = run(moved, heartbeat(6, uid=new_uid))
        assert not outcome.reply.HasField("agent_identification")
        assert outcome.event == "heartbeat"


class TestFullState:
    def test_consecutive_heartbeat_needs_nothing(self) -> None:
        outcome = run(enrolled(seq=3), heartbeat(4))
        assert outcome.reply.flags == 0
        assert outcome.event == "heartbeat" and not outcome.durable
        assert outcome.write is not None and outcome.write.is_touch

    @pytest.mark.parametrize("seq", [3, 5, 100, 0])
    def test_sequence_gap_asks_for_full_state(self, seq: int) -> None:
        assert run(enrolled(seq=3), heartbeat(seq)).reply.flags & caps.REPORT_FULL_STATE

    def test_gap_with_full_report_needs_nothing(self) -> None:
        assert run(enrolled(seq=3), full_report(seq=10)).reply.flags == 0

    def test_full_report_must_include_declared_health_and_effective_config(self) -> None:
        declared = REPORTING | caps.REPORTS_HEALTH | caps.REPORTS_EFFECTIVE_CONFIG
        msg = full_report(seq=10, capabilities=declared)
        assert run(enrolled(seq=3), msg).reply.flags & caps.REPORT_FULL_STATE
        msg.health.healthy = True
        assert run(enrolled(seq=3), msg).reply.flags & caps.REPORT_FULL_STATE
        msg.effective_config.config_map.config_map[""].body = b"receivers: {}"
        assert run(enrolled(seq=3), msg).reply.flags == 0

    def test_agent_without_description_is_not_asked_in_a_loop(self) -> None:
        # Asked once (unknown agent), answered with what it has: no description to give.
        first = run(None, heartbeat(0))
        assert first.reply.flags & caps.REPORT_FULL_STATE
        second = run(first.state, heartbeat(1))
        assert second.reply.flags == 0
        # A later gap asks again.
        assert run(second.state, heartbeat(5)).reply.flags & caps.REPORT_FULL_STATE

    def test_disconnect_never_asks_for_full_state(self) -> None:
        msg = heartbeat(99)
        msg.agent_disconnect.SetInParent()
        assert run(enrolled(seq=3), msg).reply.flags == 0


class TestStatusCompression:
    def test_absent_sub_messages_are_unchanged(self) -> None:
        state = enrolled(seq=1, health=b"\x08\x01", effective_config=b"cfg", remote_config_status=b"rcs")
        outcome = run(state, heartbeat(2))
        assert outcome.state is not None
        for name in ("description", "health", "effective_config", "remote_config_status"):
            assert getattr(outcome.state, name) == getattr(state, name)

    def test_zero_capabilities_means_not_reported(self) -> None:
        outcome = run(enrolled(seq=1), heartbeat(2, capabilities=0))
        assert outcome.state is not None and outcome.state.capabilities == REPORTING
        assert outcome.write is not None and "capabilities" not in outcome.write.changed

    def test_capability_change_is_stored_and_durable(self) -> None:
        new_caps = REPORTING | caps.ACCEPTS_RESTART_COMMAND
        outcome = run(enrolled(seq=1), heartbeat(2, capabilities=new_caps))
        assert outcome.state is not None and outcome.state.capabilities == new_caps
        assert outcome.durable

    def test_description_change_after_enrollment_is_stored(self) -> None:
        msg = heartbeat(2)
        msg.agent_description.CopyFrom(description(version="0.121.0"))
        outcome = run(enrolled(seq=1), msg)
        assert outcome.write is not None and outcome.write.changed >= {"description"}
        assert outcome.state is not None
        stored = pb.AgentDescription.FromString(outcome.state.description or b"")
        assert stored.identifying_attributes[1].value.string_value == "0.121.0"
        assert outcome.durable and outcome.event == "reported"

    def test_unchanged_description_is_not_a_change(self) -> None:
        msg = heartbeat(2)
        msg.agent_description.CopyFrom(description())
        outcome = run(enrolled(seq=1), msg)
        assert outcome.write is not None and outcome.write.changed == {"last_seen", "sequence_num"}

    def test_health_tree_is_stored_whole(self) -> None:
        msg = heartbeat(2)
        msg.health.healthy = False
        msg.health.last_error = "exporter down"
        child = msg.health.component_health_map["pipeline:traces"]
        child.healthy = False
        child.component_health_map["exporter:otlp"].last_error = "connection refused"
        outcome = run(enrolled(seq=1), msg)
        assert outcome.state is not None and outcome.state.health is not None
        stored = pb.ComponentHealth.FromString(outcome.state.health)
        grandchild = stored.component_health_map["pipeline:traces"].component_health_map["exporter:otlp"]
        assert grandchild.last_error == "connection refused"
        assert outcome.durable

    def test_every_effective_config_file_is_stored(self) -> None:
        msg = heartbeat(2)
        files = msg.effective_config.config_map.config_map
        files["collector.yaml"].body = b"receivers: {otlp: {}}"
        files["collector.yaml"].content_type = "text/yaml"
        files["extra.json"].body = b"{}"
        outcome = run(enrolled(seq=1), msg)
        assert outcome.state is not None and outcome.state.effective_config is not None
        stored = pb.EffectiveConfig.FromString(outcome.state.effective_config)
        assert set(stored.config_map.config_map) == {"collector.yaml", "extra.json"}
        # Effective config is batched, not forced through before the reply.
        assert not outcome.durable

    def test_remote_config_status_is_stored_and_durable(self) -> None:
        msg = heartbeat(2)
        msg.remote_config_status.status = pb.RemoteConfigStatuses_FAILED
        msg.remote_config_status.error_message = "bad yaml"
        msg.remote_config_status.last_remote_config_hash = b"\x01\x02"
        outcome = run(enrolled(seq=1), msg)
        assert outcome.state is not None and outcome.state.remote_config_status is not None
        assert (
            pb.RemoteConfigStatus.FromString(outcome.state.remote_config_status).error_message == "bad yaml"
        )
        assert outcome.durable

    def test_applying_is_stored_but_not_waited_for_while_applied_is(self) -> None:
        applying = heartbeat(2)
        applying.remote_config_status.status = pb.RemoteConfigStatuses_APPLYING
        applying.remote_config_status.last_remote_config_hash = b"\x01"
        outcome = run(enrolled(seq=1), applying)
        assert outcome.write is not None and "remote_config_status" in outcome.write.changed
        assert not outcome.durable
        applied = heartbeat(3)
        applied.remote_config_status.status = pb.RemoteConfigStatuses_APPLIED
        applied.remote_config_status.last_remote_config_hash = b"\x01"
        assert run(outcome.state, applied).durable
        # APPLYING with another durable change (a new description) still waits for the commit.
        applying_again = heartbeat(2)
        applying_again.CopyFrom(applying)
        applying_again.agent_description.identifying_attributes.add(
            key="service.name"
        ).value.string_value = "x"
        assert run(enrolled(seq=1), applying_again).durable

    def test_map_order_does_not_make_a_change(self) -> None:
        first, second = heartbeat(2), heartbeat(3)
        for name in ("a", "b", "c"):
            first.health.component_health_map[name].healthy = True
        for name in ("c", "b", "a"):
            second.health.component_health_map[name].healthy = True
        after_first = run(enrolled(seq=1), first).state
        outcome = run(after_first, second)
        assert outcome.write is not None and "health" not in outcome.write.changed


class TestDisconnect:
    def test_disconnect_marks_disconnected_durably(self) -> None:
        msg = heartbeat(2)
        msg.agent_disconnect.SetInParent()
        outcome = run(enrolled(seq=1), msg)
        assert outcome.state is not None and outcome.state.disconnected
        assert outcome.durable and outcome.event == "disconnected"

    def test_repeated_disconnect_is_idempotent(self) -> None:
        msg = heartbeat(2)
        msg.agent_disconnect.SetInParent()
        state = run(enrolled(seq=1), msg).state
        again = heartbeat(3)
        again.agent_disconnect.SetInParent()
        outcome = run(state, again)
        assert outcome.write is not None and "disconnected" not in outcome.write.changed
        assert not outcome.durable

    def test_next_message_reconnects(self) -> None:
        state = enrolled(seq=1, disconnected=True)
        outcome = run(state, full_report(seq=0))
        assert outcome.state is not None and not outcome.state.disconnected
        assert outcome.durable


class TestReply:
    @pytest.mark.parametrize("msg", [full_report(), heartbeat(1)])
    def test_capabilities_on_every_reply(self, msg: pb.AgentToServer) -> None:
        reply = run(enrolled(seq=0), msg).reply
        assert reply.capabilities == caps.SERVER_CAPABILITIES
        assert reply.capabilities & pb.ServerCapabilities_AcceptsStatus

    def test_server_capabilities_are_only_what_is_implemented(self) -> None:
        assert (
            (
                pb.ServerCapabilities_AcceptsStatus
                | pb.ServerCapabilities_OffersRemoteConfig
                | pb.ServerCapabilities_AcceptsEffectiveConfig
                | pb.ServerCapabilities_OffersPackages
                | pb.ServerCapabilities_AcceptsPackagesStatus
            )
            == caps.SERVER_CAPABILITIES
            == 0x1F
        )

    def test_reply_never_offers_what_was_not_asked(self) -> None:
        reply = run(enrolled(seq=0), heartbeat(1)).reply
        for field in (
            "remote_config",
            "connection_settings",
            "packages_available",
            "command",
            "error_response",
        ):
            assert not reply.HasField(field)


def test_capability_names_include_unknown_bits() -> None:
    assert caps.capability_names(caps.REPORTS_STATUS | caps.ACCEPTS_REMOTE_CONFIG) == [
        "AcceptsRemoteConfig",
        "ReportsStatus",
    ]
    assert caps.capability_names(1 << 40) == ["Bit0x10000000000"]


class TestConnectionSettingsRequest:
    def test_a_csr_is_refused_with_bad_request_and_the_report_kept(self) -> None:
        state = enrolled()
        msg = heartbeat(1)
        msg.health.healthy = True
        msg.connection_settings_request.opamp.certificate_request.csr = b"-----BEGIN CERTIFICATE REQUEST-----"
        outcome = run(state, msg)
        err = error_of(outcome)
        assert err.type == pb.ServerErrorResponseType_BadRequest
        assert "certificates" in err.error_message
        assert outcome.reply.instance_uid == UID and outcome.reply.capabilities == 0
        assert outcome.state is not None and outcome.state.health is not None
        assert outcome.write is not None and "health" in outcome.write.changed and outcome.durable

    def test_a_csr_after_a_gap_asks_again_on_the_next_message(self) -> None:
        state = enrolled()
        msg = heartbeat(5)
        msg.connection_settings_request.opamp.SetInParent()
        outcome = run(state, msg)
        assert outcome.state is not None and outcome.state.sequence_num == 0
        assert run(outcome.state, heartbeat(6)).reply.flags & caps.REPORT_FULL_STATE


class TestTemporaryUid:
    @pytest.mark.parametrize("temporary", [b"", b"\x01", b"tmp-123"])
    def test_a_short_temporary_uid_with_request_instance_uid_is_answered(
        self, temporary: bytes, minted: Callable[[], bytes]
    ) -> None:
        msg = full_report(uid=temporary)
        msg.flags = caps.REQUEST_INSTANCE_UID
        outcome = run(None, msg, minted)
        assert not outcome.reply.HasField("error_response")
        assert outcome.reply.instance_uid == temporary
        new_uid = outcome.reply.agent_identification.new_instance_uid
        assert len(new_uid) == 16
        assert outcome.state is not None and outcome.state.instance_uid == new_uid

    def test_a_short_uid_without_the_flag_is_still_bad_request(self) -> None:
        assert run(None, full_report(uid=b"\x01")).rejected
