"""RFC 6455 frames as the server reads and writes them (gateway/transport/ws_frames.py)."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given, settings, strategies as st

from gateway.transport import ws_frames as f
from gateway.transport.ws_frames import FrameError, FrameReader


def client_frame(
    opcode: int, payload: bytes, *, fin: bool = True, mask: bytes | None = None, rsv: int = 0
) -> bytes:
    """A frame as a client sends it: masked (unless mask=b"")."""
    key = os.urandom(4) if mask is None else mask
    first = (0x80 if fin else 0) | rsv | opcode
    n = len(payload)
    bit = 0x80 if key else 0
    if n < 126:
        head = bytes((first, bit | n))
    elif n < 65536:
        head = struct.pack("!BBH", first, bit | 126, n)
    else:
        head = struct.pack("!BBQ", first, bit | 127, n)
    if not key:
        return head + payload
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + key + masked


def test_a_whole_binary_frame_is_one_message() -> None:
    reader = FrameReader(1000)
    assert reader.feed(client_frame(f.OP_BINARY, b"\x00hello")) == [(f.OP_BINARY, b"\x00hello")]
    assert reader.buffered == 0


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70000])
def test_every_length_encoding(size: int) -> None:
    payload = os.urandom(size)
    assert FrameReader(100_000).feed(client_frame(f.OP_BINARY, payload)) == [(f.OP_BINARY, payload)]


def test_bytes_in_any_pieces_give_the_same_messages() -> None:
    data = b"".join(
        [
            client_frame(f.OP_BINARY, b"a" * 300),
            client_frame(f.OP_PING, b"p"),
            client_frame(f.OP_BINARY, b"first ", fin=False),
            client_frame(f.OP_PONG, b""),
            client_frame(f.OP_CONTINUATION, b"second"),
        ]
    )
    expected = [
        (f.OP_BINARY, b"a" * 300),
        (f.OP_PING, b"p"),
        (f.OP_PONG, b""),
        (f.OP_BINARY, b"first second"),
    ]
    for step in (1, 2, 3, 7, 64):
        reader = FrameReader(1000)
        events = []
        for i in range(0, len(data), step):
            events.extend(reader.feed(data[i : i + step]))
        assert events == expected, step
        assert reader.buffered == 0


def test_a_message_over_the_limit_is_refused_from_its_header() -> None:
    reader = FrameReader(100)
    # Only the header of a 60 MB frame has arrived: refused before any payload is held.
    head = struct.pack("!BBQ", 0x82, 0x80 | 127, 60_000_000) + b"mask"
    with pytest.raises(FrameError) as caught:
        reader.feed(head)
    assert caught.value.code == f.CLOSE_TOO_BIG


def test_fragments_count_toward_the_limit_together() -> None:
    reader = FrameReader(100)
    reader.feed(client_frame(f.OP_BINARY, b"x" * 60, fin=False))
    assert reader.buffered == 60
    with pytest.raises(FrameError) as caught:
        reader.feed(client_frame(f.OP_CONTINUATION, b"x" * 60)[:8])
    assert caught.value.code == f.CLOSE_TOO_BIG


@pytest.mark.parametrize(
    ("data", "code", "words"),
    [
        (client_frame(f.OP_BINARY, b"x", mask=b""), 1002, "masked"),
        (client_frame(f.OP_BINARY, b"x", rsv=0x40), 1002, "reserved bits"),
        (client_frame(0x3, b"x"), 1002, "unknown opcode"),
        (client_frame(0xB, b"x"), 1002, "unknown opcode"),
        (client_frame(f.OP_PING, b"x", fin=False), 1002, "fragmented"),
        (client_frame(f.OP_PING, b"x" * 126), 1002, "125 bytes"),
        (client_frame(f.OP_CONTINUATION, b"x"), 1002, "without a message"),
        (
            client_frame(f.OP_BINARY, b"x", fin=False) + client_frame(f.OP_TEXT, b"y"),
            1002,
            "before the fragmented",
        ),
        (client_frame(f.OP_CLOSE, b"\x03"), 1002, "one byte"),
        (client_frame(f.OP_CLOSE, struct.pack("!H", 1005)), 1002, "invalid close code 1005"),
        (client_frame(f.OP_CLOSE, struct.pack("!H", 999)), 1002, "invalid close code"),
        (client_frame(f.OP_CLOSE, struct.pack("!H", 1000) + b"\xff"), 1007, "UTF-8"),
        (struct.pack("!BBQ", 0x82, 0xFF, 1 << 63), 1002, "63 bits"),
    ],
)
def test_protocol_errors_name_the_close_code(data: bytes, code: int, words: str) -> None:
    with pytest.raises(FrameError) as caught:
        FrameReader(1000).feed(data)
    assert caught.value.code == code
    assert words in caught.value.reason


def test_close_payloads() -> None:
    assert f.parse_close(b"") == (f.CLOSE_NO_STATUS, "")
    assert f.parse_close(struct.pack("!H", 4000) + "bye ✓".encode()) == (4000, "bye ✓")
    assert FrameReader(10).feed(client_frame(f.OP_CLOSE, struct.pack("!H", 1001))) == [
        (f.OP_CLOSE, struct.pack("!H", 1001))
    ]


def test_server_frames_are_unmasked_and_final() -> None:
    assert f.frame(f.OP_BINARY, b"abc") == b"\x82\x03abc"
    assert f.frame(f.OP_BINARY, b"x" * 200)[:4] == b"\x82\x7e\x00\xc8"
    assert f.frame(f.OP_BINARY, b"x" * 70000)[:10] == b"\x82\x7f" + struct.pack("!Q", 70000)


def test_a_close_reason_is_cut_to_123_bytes_of_utf8() -> None:
    data = f.close_frame(1000, "é" * 100)
    assert data[0] == 0x88 and data[1] <= 125
    code, reason = f.parse_close(data[2:])
    assert code == 1000 and reason.endswith("...") and len(reason.encode()) <= 123


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400), st.integers(min_value=1, max_value=50))
def test_any_bytes_give_messages_or_a_frame_error(data: bytes, step: int) -> None:
    reader = FrameReader(200)
    try:
        for i in range(0, len(data), step):
            for opcode, payload in reader.feed(data[i : i + step]):
                assert opcode in (f.OP_TEXT, f.OP_BINARY, f.OP_CLOSE, f.OP_PING, f.OP_PONG)
                assert len(payload) <= 200
    except FrameError as exc:
        assert exc.code in (1002, 1007, 1009)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.binary(max_size=300), st.integers(min_value=1, max_value=4)), max_size=6))
def test_fragmented_messages_are_joined_in_order(messages: list[tuple[bytes, int]]) -> None:
    data = b""
    for payload, parts in messages:
        size = -(-len(payload) // parts) or 1
        pieces = [payload[i : i + size] for i in range(0, len(payload), size)] or [b""]
        for i, piece in enumerate(pieces):
            opcode = f.OP_BINARY if i == 0 else f.OP_CONTINUATION
            data += client_frame(opcode, piece, fin=i == len(pieces) - 1)
            if i == 0:
                data += client_frame(f.OP_PING, b"between")
    events = FrameReader(10_000).feed(data)
    assert [p for op, p in events if op == f.OP_BINARY] == [p for p, _ in messages]
