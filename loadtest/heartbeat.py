"""The lean agent's messages as whole WebSocket frames: heartbeats from pre-encoded bytes, anything
else from the model (`harness.agent.SimAgent`).

A heartbeat is `AgentToServer{instance_uid, sequence_num, capabilities}`, and only its
`sequence_num` changes from one to the next: its frame is a prefix (frame header aside: the OpAMP
header byte and the uid field), the sequence number's varint and a suffix (the capabilities field),
the bytes protobuf writes for the same message (fields in number order, zero values left out).
tests/loadtest/test_heartbeat.py holds it to that.
"""

from __future__ import annotations

from harness.agent import SimAgent
from loadtest.frames import binary_frame

# Field tags of AgentToServer (proto/opamp/v1/opamp.proto): field number << 3 | wire type.
_UID_TAG = b"\x0a"  # 1, length-delimited
_SEQ_TAG = b"\x10"  # 2, varint
_CAPABILITIES_TAG = b"\x20"  # 4, varint
# The WebSocket OpAMP header: varint 0 before every protobuf message.
_OPAMP_HEADER = b"\x00"


_ONE_BYTE = tuple(bytes((n,)) for n in range(0x80))


def varint(value: int) -> bytes:
    """A protobuf base-128 varint (uint64)."""
    if value < 0x80:
        return _ONE_BYTE[value]
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


class Heartbeats:
    """Heartbeat frames for one agent; the prefix follows the agent's uid when it adopts a new one."""

    def __init__(self) -> None:
        self._uid: bytes | None = None
        self._capabilities = -1
        self._prefix = b""
        self._suffix = b""

    def frame(self, uid: bytes, seq: int, capabilities: int) -> bytes:
        if uid is not self._uid or capabilities != self._capabilities:
            self._uid, self._capabilities = uid, capabilities
            self._prefix = _OPAMP_HEADER + (_UID_TAG + varint(len(uid)) + uid if uid else b"")
            self._suffix = _CAPABILITIES_TAG + varint(capabilities) if capabilities else b""
        return binary_frame(self._prefix + (_SEQ_TAG + varint(seq) if seq else b"") + self._suffix)


def next_frame(agent: SimAgent, heartbeats: Heartbeats) -> tuple[str, bytes]:
    """The agent's next scheduled message as (request name, frame), as `SimAgent.next_message`
    would make it: a full report when one is due, else a heartbeat from pre-encoded bytes."""
    if agent.full_report_due:
        name, msg = agent.next_message()
        return name, binary_frame(_OPAMP_HEADER + msg.SerializeToString())
    # SimAgent.heartbeat without building the message: the same state change, the same bytes.
    agent.seq += 1
    return "heartbeat", heartbeats.frame(agent.uid, agent.seq, agent.capabilities)
