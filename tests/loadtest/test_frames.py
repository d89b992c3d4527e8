"""The lean agent's WebSocket framing: client frames masked with a zero key, server frames read
from any split of the byte stream, control frames and fragments as RFC 6455 says."""

from __future__ import annotations

import pytest

from loadtest.frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    FrameReader,
    ProtocolError,
    binary_frame,
    client_frame,
    close_payload,
)


def _server_frame(opcode: int, payload: bytes, final: bool = True) -> bytes:
    n = len(payload)
    first = (0x80 if final else 0) | opcode
    if n < 126:
        return bytes((first, n)) + payload
    if n < 1 << 16:
        return bytes((first, 126)) + n.to_bytes(2, "big") + payload
    return bytes((first, 127)) + n.to_bytes(8, "big") + payload


@pytest.mark.parametrize(
    ("size", "length_bytes"), [(0, b"\x80"), (125, b"\xfd"), (126, b"\xfe\x00\x7e"), (65535, b"\xfe\xff\xff")]
)
def test_client_frames_are_final_masked_with_a_zero_key_and_carry_the_payload_as_is(
    size: int, length_bytes: bytes
) -> None:
    payload = bytes(i % 251 for i in range(size))
    frame = binary_frame(payload)
    header = b"\x82" + length_bytes
    assert frame == header + b"\x00\x00\x00\x00" + payload


def test_a_client_frame_of_64_kib_or_more_has_an_8_byte_length() -> None:
    payload = b"x" * 65536
    frame = client_frame(OP_BINARY, payload)
    assert frame[:10] == b"\x82\xff" + (65536).to_bytes(8, "big")
    assert frame[10:14] == b"\x00\x00\x00\x00" and frame[14:] == payload


def test_a_control_frame_over_125_bytes_is_refused() -> None:
    assert client_frame(OP_PONG, b"p" * 125)[:2] == b"\x8a\xfd"
    with pytest.raises(ValueError, match="125"):
        client_frame(OP_PING, b"p" * 126)


@pytest.mark.parametrize("size", [0, 5, 125, 126, 65535, 65536, 200_000])
def test_server_frames_of_every_length_form_are_read_whole_from_any_split(size: int) -> None:
    payload = bytes(i % 253 for i in range(size))
    stream = _server_frame(OP_BINARY, payload)
    whole = FrameReader().feed(stream)
    assert whole == [(OP_BINARY, payload)]
    reader = FrameReader()
    cut = [0, 1, 2, 3, 9, 11, len(stream) // 2, len(stream)]
    got = []
    for start, end in zip(cut, cut[1:], strict=False):
        got += reader.feed(stream[start:end])
    assert got == [(OP_BINARY, payload)]


def test_several_frames_in_one_read_come_out_in_order() -> None:
    stream = (
        _server_frame(OP_PING, b"abcd") + _server_frame(OP_BINARY, b"\x00r1") + _server_frame(OP_TEXT, b"t")
    )
    assert FrameReader().feed(stream) == [(OP_PING, b"abcd"), (OP_BINARY, b"\x00r1"), (OP_TEXT, b"t")]


def test_a_fragmented_message_comes_out_whole_with_control_frames_in_between_on_their_own() -> None:
    reader = FrameReader()
    assert reader.feed(_server_frame(OP_BINARY, b"\x00ab", final=False)) == []
    assert reader.feed(_server_frame(OP_PING, b"p")) == [(OP_PING, b"p")]
    assert reader.feed(_server_frame(OP_CONTINUATION, b"cd", final=False)) == []
    assert reader.feed(_server_frame(OP_CONTINUATION, b"ef")) == [(OP_BINARY, b"\x00abcdef")]
    # And the reader is ready for the next message.
    assert reader.feed(_server_frame(OP_BINARY, b"\x00g")) == [(OP_BINARY, b"\x00g")]


@pytest.mark.parametrize(
    ("stream", "match"),
    [
        (_server_frame(OP_CONTINUATION, b"x"), "continuation"),
        (_server_frame(OP_BINARY, b"a", final=False) + _server_frame(OP_BINARY, b"b"), "unfinished"),
        (bytes((0x82, 0x81)) + b"\x01\x02\x03\x04x", "masked"),
        (bytes((0xC2, 1)) + b"x", "reserved bits"),
        (_server_frame(0x3, b"x"), "reserved opcode"),
        (_server_frame(OP_PING, b"p", final=False), "control frame"),
        (_server_frame(OP_CLOSE, b"c" * 126), "control frame"),
        (bytes((0x82, 127)) + (1 << 40).to_bytes(8, "big"), "over the limit"),
    ],
)
def test_broken_framing_fails_loudly(stream: bytes, match: str) -> None:
    with pytest.raises(ProtocolError, match=match):
        FrameReader().feed(stream)


def test_close_payload_gives_code_and_reason() -> None:
    assert close_payload((4000).to_bytes(2, "big") + b"taken over") == (4000, "taken over")
    assert close_payload(b"") == (None, "")
