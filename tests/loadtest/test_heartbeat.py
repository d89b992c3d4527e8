"""The lean agent's pre-encoded heartbeat is the model's heartbeat, byte for byte, and its message
sequence is the model's: full reports from the model, the same sequence numbers and uid."""

from __future__ import annotations

import pytest

from gateway.proto import opamp_pb2 as pb
from harness.agent import SimAgent
from loadtest.frames import binary_frame
from loadtest.heartbeat import Heartbeats, next_frame, varint


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 2**32, 2**64 - 1])
def test_varint_is_protobufs(value: int) -> None:
    assert varint(value) == pb.AgentToServer(sequence_num=value).SerializeToString()[1:] or value == 0


@pytest.mark.parametrize("seq", [0, 1, 2, 127, 128, 16_383, 16_384, 2**31, 2**63])
@pytest.mark.parametrize("capabilities", [0, 1, 0x1FF, 2**40])
@pytest.mark.parametrize("uid", [b"", bytes(range(16)), b"u" * 200])
def test_a_heartbeat_frame_carries_exactly_what_protobuf_writes(
    seq: int, capabilities: int, uid: bytes
) -> None:
    msg = pb.AgentToServer(instance_uid=uid, sequence_num=seq, capabilities=capabilities)
    assert Heartbeats().frame(uid, seq, capabilities) == binary_frame(b"\x00" + msg.SerializeToString())


def test_the_message_sequence_is_the_models_through_uid_adoption_and_full_reports() -> None:
    lean, model = SimAgent(index=1), SimAgent(index=1)
    model.uid = lean.uid
    beats = Heartbeats()
    new_uid = pb.ServerToAgent()
    new_uid.agent_identification.new_instance_uid = b"\x07" * 16
    replies = [pb.ServerToAgent(), new_uid, pb.ServerToAgent(flags=pb.ServerToAgentFlags_ReportFullState)]
    names = []
    for step in range(12):
        name, frame = next_frame(lean, beats)
        want_name, want = model.next_message()
        names.append(name)
        assert (name, frame) == (want_name, binary_frame(b"\x00" + want.SerializeToString())), step
        if step < len(replies):
            # Both answer the same reply the same way (ReportFullState: a full report at once).
            assert lean.react(replies[step]).send == model.react(replies[step]).send
        if step == 5:
            # As after a lost connection: the next message is a full report.
            lean.full_report_due = model.full_report_due = True
    assert names[0] == names[6] == "full report" and names.count("full report") == 2
    assert lean.uid == model.uid == b"\x07" * 16 and lean.seq == model.seq == 12
