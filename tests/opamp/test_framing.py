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


@pytest.mark.parametrize(
    ("header", "value"),
    [(b"\x01", 1), (b"\x7f", 127), (b"\x81\x01", 129), (b"\xff\xff\x03", 65535), (b"\x80\x01", 128)],
)
def test_non_zero_header_is_rejected_with_its_value(header: bytes, value: int) -> None:
    with pytest.raises(framing.UnsupportedHeader) as caught:
        framing.decode(header + b"\x0a\x10" + b"x" * 16)
    assert caught.value.value == value
    assert str(value) in str(caught.value)


def test_headerless_protobuf_is_rejected() -> None:
    # A legacy client without the header: the first protobuf tag byte (0x0a) reads as header 10.
    msg = pb.AgentToServer(instance_uid=b"\x03" * 16).SerializeToString()
    with pytest.raises(framing.UnsupportedHeader) as caught:
        framing.decode(msg)
    assert caught.value.value == 0x0A


def test_empty_message_has_no_header() -> None:
    with pytest.raises(framing.MissingHeader, match="empty"):
        framing.decode(b"")


def test_truncated_varint_header() -> None:
    with pytest.raises(framing.MissingHeader, match="shorter"):
        framing.decode(b"\x80\x80")


def test_varint_longer_than_ten_bytes_is_invalid() -> None:
    with pytest.raises(framing.InvalidHeader, match="longer than 10"):
        framing.decode(b"\x80" * 10 + b"\x00")


def test_varint_over_64_bits_is_invalid() -> None:
    with pytest.raises(framing.InvalidHeader, match="64 bits"):
        framing.decode(b"\xff" * 9 + b"\x7f")


def test_largest_uint64_header_decodes_but_is_unsupported() -> None:
    header = framing.encode_varint((1 << 64) - 1)
    assert len(header) == 10
    with pytest.raises(framing.UnsupportedHeader):
        framing.decode(header)


def test_oversize_payload() -> None:
    assert framing.decode(b"\x00" + b"a" * 100, limit=100) == b"a" * 100
    with pytest.raises(framing.MessageTooLarge) as caught:
        framing.decode(b"\x00" + b"a" * 101, limit=100)
    assert (caught.value.size, caught.value.limit) == (101, 100)


@pytest.mark.parametrize("value", [0, 1, 127, 128, 300, 16383, 16384, (1 << 63), (1 << 64) - 1])
def test_varint_round_trip(value: int) -> None:
    encoded = framing.encode_varint(value)
    assert framing.decode_varint(encoded + b"rest") == (value, len(encoded))


def test_encode_varint_refuses_out_of_range() -> None:
    with pytest.raises(ValueError):
        framing.encode_varint(-1)
    with pytest.raises(ValueError):
        framing.encode_varint(1 << 64)
