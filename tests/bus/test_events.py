from __future__ import annotations

import json
import uuid

import pytest

from gateway.bus.base import (
    AgentCommand,
    BadEvent,
    ConfigsChanged,
    ConnectionTakenOver,
    Envelope,
    Event,
    Owner,
    decode,
    encode,
)
from gateway.proto import opamp_pb2 as pb

UID = uuid.UUID("0190a0b0-c0d0-7e00-8000-000000000001").bytes


@pytest.mark.parametrize(
    "event",
    [
        ConfigsChanged(reason="group linux updated"),
        AgentCommand(uid=UID, command=pb.CommandType_Restart),
        ConnectionTakenOver(uid=UID, new_node="node-b", epoch="0190a0b0c0d07e00"),
    ],
)
def test_round_trip(event: Event) -> None:
    envelope = Envelope(event=event, source="node-a", sent_at=1700000000.25)
    assert decode(encode(envelope)) == envelope


def test_uids_travel_as_canonical_uuid_text() -> None:
    data = encode(Envelope(event=AgentCommand(uid=UID, command=0), source="a", sent_at=0.0))
    assert b'"uid":"0190a0b0-c0d0-7e00-8000-000000000001"' in data
    assert b'"type":"AgentCommand"' in data


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b'{"type": "Reboot", "source": "a", "sent_at": 0}',
        b'{"type": "AgentCommand", "source": "a", "sent_at": 0, "command": 0}',
        b'{"type": "AgentCommand", "source": "a", "sent_at": 0, "uid": "nope", "command": 0}',
        b"[1, 2]",
    ],
)
def test_garbage_is_a_bad_event(data: bytes) -> None:
    with pytest.raises(BadEvent):
        decode(data)


def test_owner_record_round_trip() -> None:
    owner = Owner(node="node-a", epoch="abc")
    assert Owner.decode(owner.encode()) == owner
    assert owner.encode() == '{"epoch":"abc","node":"node-a"}'
    with pytest.raises(BadEvent):
        Owner.decode(b"{}")


@pytest.mark.parametrize("node", ["node-a", 'n\u0153ud "x"\\', "pod-7f9c\t"])
def test_owner_encoding_is_sorted_compact_json(node: str) -> None:
    owner = Owner(node=node, epoch="0192f0c4e1d27c3a")
    assert owner.encode() == json.dumps(
        {"node": node, "epoch": owner.epoch}, separators=(",", ":"), sort_keys=True
    )
    assert Owner.decode(owner.encode()) == owner
