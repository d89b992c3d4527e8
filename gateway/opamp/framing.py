"""OpAMP WebSocket message framing: `header || data`.

The header is an unsigned 64-bit protobuf varint that must be 0 in this version of the spec; `data`
is the serialized AgentToServer or ServerToAgent, and may be empty (an empty message is valid).
Pure: bytes in, bytes out.

Messages without the header are accepted, as opamp-go still does: clients older than the header
(spec v0.7.0) send bare protobuf. The two cannot be confused, since a protobuf encoding never starts
with a varint 0 (field number 0 is invalid). A message whose "header" is not 0 is therefore read as
header-less; it is then malformed protobuf (the spec's "treat as malformed"), which the transport
answers with BadRequest.
"""

from __future__ import annotations

# The header every message we send carries: varint 0.
HEADER = b"\x00"
# A uint64 varint is at most 10 bytes long.
MAX_HEADER_BYTES = 10
_UINT64_MAX = (1 << 64) - 1


class FramingError(ValueError):
    """A WebSocket message that is not a well-formed OpAMP message."""


class MessageTooLarge(FramingError):
    """The message, header included (spec: the limit is on the WebSocket message), exceeds the
    configured message size limit."""

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


def zero_header_length(data: bytes) -> int:
    """Bytes taken by a varint 0 at the start of `data` (0 if there is none). A non-minimal encoding
    of 0 (e.g. 0x80 0x00) is still the value 0, as any protobuf varint decoder reads it."""
    for i, byte in enumerate(data[:MAX_HEADER_BYTES]):
        if byte & 0x7F:
            return 0
        if not byte & 0x80:
            return i + 1
    return 0


def encode(payload: bytes) -> bytes:
    """One outgoing message: header 0, then the serialized ServerToAgent."""
    return HEADER + payload


def decode(message: bytes, limit: int | None = None) -> bytes:
    """The serialized AgentToServer inside one incoming message (possibly empty): the message
    without its header 0, or the whole message when it has no header."""
    if limit is not None and len(message) > limit:
        raise MessageTooLarge(len(message), limit)
    if message[:1] == HEADER:
        return message[1:]  # the only header anyone sends; skip the loop
    return message[zero_header_length(message) :]
