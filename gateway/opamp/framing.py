"""OpAMP WebSocket message framing: `header || data`.

The header is an unsigned 64-bit protobuf varint that must be 0 in this version of the spec; `data`
is the serialized AgentToServer or ServerToAgent, and may be empty (an empty message is valid).
Pure: bytes in, bytes out.
"""

from __future__ import annotations

# The header every message we send carries: varint 0.
HEADER = b"\x00"
# A uint64 varint is at most 10 bytes long.
MAX_HEADER_BYTES = 10
_UINT64_MAX = (1 << 64) - 1


class FramingError(ValueError):
    """A WebSocket message that is not a well-formed OpAMP message."""


class MissingHeader(FramingError):
    """The message ends before its varint header does (an empty message has no header)."""


class InvalidHeader(FramingError):
    """The header is not a uint64 varint (more than 10 bytes, or over 64 bits)."""


class UnsupportedHeader(FramingError):
    """The header decodes, but its value is reserved (only 0 is defined)."""

    def __init__(self, value: int) -> None:
        super().__init__(
            f"WebSocket message header is {value}, only 0 is defined "
            "(messages without the header are not accepted)"
        )
        self.value = value


class MessageTooLarge(FramingError):
    """The payload after the header exceeds the configured message size limit."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"message of {size} bytes exceeds the {limit}-byte limit")
        self.size = size
        self.limit = limit


def encode_varint(value: int) -> bytes:
    if not 0 <= value <= _UINT64_MAX:
        raise ValueError(f"varint out of uint64 range: {value}")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_varint(data: bytes) -> tuple[int, int]:
    """(value, bytes consumed) of the varint at the start of `data`."""
    value = 0
    for i, byte in enumerate(data[:MAX_HEADER_BYTES]):
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            if value > _UINT64_MAX:
                raise InvalidHeader("WebSocket message header does not fit in 64 bits")
            return value, i + 1
    if len(data) >= MAX_HEADER_BYTES:
        raise InvalidHeader(f"WebSocket message header is longer than {MAX_HEADER_BYTES} bytes")
    raise MissingHeader("WebSocket message is shorter than its header" if data else "empty WebSocket message")


def encode(payload: bytes) -> bytes:
    """One outgoing message: header 0, then the serialized ServerToAgent."""
    return HEADER + payload


def decode(message: bytes, limit: int | None = None) -> bytes:
    """The serialized AgentToServer inside one incoming message (possibly empty).

    A non-minimal encoding of 0 (e.g. 0x80 0x00) is still the value 0 and is accepted, like any
    protobuf varint decoder would.
    """
    if message[:1] == HEADER:
        offset = 1  # the only header anyone sends; skip the loop
    else:
        value, offset = decode_varint(message)
        if value != 0:
            raise UnsupportedHeader(value)
    size = len(message) - offset
    if limit is not None and size > limit:
        raise MessageTooLarge(size, limit)
    return message[offset:]
