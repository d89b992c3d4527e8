from __future__ import annotations

import pytest

from gateway.opamp import framing
from gateway.proto import opamp_pb2 as pb


def test_encode_prefixes_header_zero() -> None:
    reply = pb.ServerToAgent(instance_uid=b"\x01" * 16)
    assert framing.encode(reply.SerializeToString()) == b"\x00" + reply.SerializeToString()
    assert framing.encode(b"") == b"\x00"


def test_decode_strips_single_byte_header() -> None:
    msg = pb.AgentToServer(instance_uid=b"\x02" * 16, sequence_num=7)
    payload = framing.decode(b"\x00" + msg.SerializeToString())
    assert pb.AgentToServer.FromString(payload) == msg


def test_empty_payload_is_valid() -> None:
    assert framing.decode(b"\x00") == b""
    assert pb.AgentToServer.FromString(framing.decode(b"\x00")) == pb.AgentToServer()


@pytest.mark.parametrize("header", [b"\x80\x00", b"\x80\x80\x00", b"\x80" * 9 + b"\x00"])
def test_multi_byte_encoding_of_zero_is_accepted(header: bytes) -> None:
    assert framing.decode(header + b"\x0a\x00") == b"\x0a\x00"


def test_headerless_protobuf_is_accepted() -> None:
    # A client older than the header (opamp-go still accepts these): the whole message is protobuf.
    msg = pb.AgentToServer(instance_uid=b"\x03" * 16, sequence_num=2)
    assert pb.AgentToServer.FromString(framing.decode(msg.SerializeToString())) == msg


@pytest.mark.parametrize("message", [b"\x01\x0a\x10", b"\x81\x01", b"\x80" * 10 + b"\x00", b"\x80\x80"])
def test_a_non_zero_or_broken_header_is_left_to_the_protobuf_decoder(message: bytes) -> None:
    # Not a varint 0: read as header-less data, which the transport decodes (or answers BadRequest).
    assert framing.decode(message) == message


def test_empty_message_is_an_empty_header_less_message() -> None:
    assert framing.decode(b"") == b""


def test_the_limit_counts_the_header() -> None:
    assert framing.decode(b"\x00" + b"a" * 99, limit=100) == b"a" * 99
    with pytest.raises(framing.MessageTooLarge) as caught:
        framing.decode(b"\x00" + b"a" * 100, limit=100)
    assert (caught.value.size, caught.value.limit) == (101, 100)
    assert "101 bytes" in str(caught.value)


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 16383, 16384, (1 << 63), (1 << 64) - 1])
def test_varint_encoding(value: int) -> None:
    encoded = framing.encode_varint(value)
    assert len(encoded) == max(1, (value.bit_length() + 6) // 7)
    assert framing.zero_header_length(encoded + b"rest") == (1 if value == 0 else 0)


def test_encode_varint_refuses_out_of_range() -> None:
    with pytest.raises(ValueError):
        framing.encode_varint(-1)
    with pytest.raises(ValueError):
        framing.encode_varint(1 << 64)
