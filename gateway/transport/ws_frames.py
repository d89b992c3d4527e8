"""RFC 6455 frames, as a server reads and writes them. Pure: bytes in, events or bytes out.

`FrameReader` takes the bytes a client sends, in whatever pieces TCP delivers them, and yields whole
messages (fragments joined) and control frames. It enforces what a server must (section 5): every
client frame masked, no reserved bits (no extension is ever negotiated), known opcodes, control frames
short and unfragmented, continuations only inside a fragmented message, and a well-formed close
payload. A message longer than the limit is refused from its frame header, before its payload is
buffered, so a peer announcing a huge frame holds no memory.

Frames the server writes are never masked (5.1) and never fragmented.
"""

from __future__ import annotations

import struct

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA
_DATA_OPCODES = frozenset((OP_TEXT, OP_BINARY))
_CONTROL_OPCODES = frozenset((OP_CLOSE, OP_PING, OP_PONG))

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_UNSUPPORTED_DATA = 1003
# Never sent in a close frame (7.4.1): the peer closed without a status code.
CLOSE_NO_STATUS = 1005
CLOSE_INVALID_PAYLOAD = 1007
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011
CLOSE_SERVICE_RESTART = 1012
# Codes a peer may send (7.4.1, 7.4.2): the defined ones, then registered (3000-3999) and private
# (4000-4999) ranges. 1004, 1005, 1006 and 1015 must never appear in a close frame.
_VALID_PEER_CODES = frozenset((1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014))
# A control frame's payload is at most 125 bytes (5.5); a close reason so at most 123.
MAX_CONTROL_PAYLOAD = 125
MAX_REASON_BYTES = 123


class FrameError(Exception):
    """The client broke the protocol; the connection must close with `code`."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


def _unmask(payload: bytes, mask: bytes) -> bytes:
    # One big-integer XOR: C speed for every length, no per-byte Python loop.
    n = len(payload)
    if n == 0:
        return payload
    key = (mask * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(key, "little")).to_bytes(n, "little")


class FrameReader:
    """Reads one client's frames. `feed` returns (opcode, payload) for each whole data message
    (OP_TEXT or OP_BINARY, fragments joined) and each control frame, in order."""

    __slots__ = ("_buffer", "_limit", "_fragments", "_fragment_opcode", "_fragment_size")

    def __init__(self, limit: int) -> None:
        # A data message's payload may be at most this many bytes.
        self._limit = limit
        self._buffer = b""
        self._fragments: list[bytes] | None = None
        self._fragment_opcode = 0
        self._fragment_size = 0

    @property
    def buffered(self) -> int:
        """Bytes held for frames not yet complete."""
        return len(self._buffer) + self._fragment_size

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """The messages and control frames `data` completes; FrameError if it breaks the protocol."""
        buffer = self._buffer + data if self._buffer else data
        events: list[tuple[int, bytes]] = []
        offset = 0
        end = len(buffer)
        while end - offset >= 2:
            first, second = buffer[offset], buffer[offset + 1]
            if first & 0x70:
                raise FrameError(CLOSE_PROTOCOL_ERROR, "reserved bits set: no extension was negotiated")
            if not second & 0x80:
                raise FrameError(CLOSE_PROTOCOL_ERROR, "a client frame must be masked")
            opcode = first & 0x0F
            fin = first & 0x80
            length = second & 0x7F
            header = 6
            if length == 126:
                header = 8
                if end - offset < 4:
                    break
                (length,) = struct.unpack_from("!H", buffer, offset + 2)
            elif length == 127:
                header = 14
                if end - offset < 10:
                    break
                (length,) = struct.unpack_from("!Q", buffer, offset + 2)
                if length >> 63:
                    raise FrameError(CLOSE_PROTOCOL_ERROR, "frame length over 63 bits")
            self._check(opcode, fin, length)
            if end - offset < header + length:
                break
            start = offset + header
            payload = _unmask(buffer[start : start + length], buffer[start - 4 : start])
            offset = start + length
            event = self._frame(opcode, fin, payload)
            if event is not None:
                events.append(event)
        self._buffer = buffer[offset:] if offset < end else b""
        return events

    def _check(self, opcode: int, fin: int, length: int) -> None:
        """Refuse a frame from its header, before its payload arrives."""
        if opcode in _CONTROL_OPCODES:
            if not fin:
                raise FrameError(CLOSE_PROTOCOL_ERROR, "a control frame must not be fragmented")
            if length > MAX_CONTROL_PAYLOAD:
                raise FrameError(CLOSE_PROTOCOL_ERROR, "a control frame carries at most 125 bytes")
            return
        if opcode == OP_CONTINUATION:
            if self._fragments is None:
                raise FrameError(CLOSE_PROTOCOL_ERROR, "continuation frame without a message to continue")
            size = self._fragment_size + length
        elif opcode in _DATA_OPCODES:
            if self._fragments is not None:
                raise FrameError(CLOSE_PROTOCOL_ERROR, "new message before the fragmented one ended")
            size = length
        else:
            raise FrameError(CLOSE_PROTOCOL_ERROR, f"unknown opcode {opcode:#x}")
        if size > self._limit:
            raise FrameError(CLOSE_TOO_BIG, f"message of {size} bytes exceeds the {self._limit}-byte limit")

    def _frame(self, opcode: int, fin: int, payload: bytes) -> tuple[int, bytes] | None:
        if opcode >= OP_CLOSE:
            if opcode == OP_CLOSE:
                parse_close(payload)
            return opcode, payload
        if opcode == OP_CONTINUATION:
            assert self._fragments is not None
            self._fragments.append(payload)
            self._fragment_size += len(payload)
            if not fin:
                return None
            message = b"".join(self._fragments)
            opcode = self._fragment_opcode
            self._fragments = None
            self._fragment_size = 0
            return opcode, message
        if fin:
            return opcode, payload
        self._fragments = [payload]
        self._fragment_opcode = opcode
        self._fragment_size = len(payload)
        return None


def parse_close(payload: bytes) -> tuple[int, str]:
    """(code, reason) of a close frame's payload; CLOSE_NO_STATUS for an empty one."""
    if not payload:
        return CLOSE_NO_STATUS, ""
    if len(payload) == 1:
        raise FrameError(CLOSE_PROTOCOL_ERROR, "a close payload of one byte")
    (code,) = struct.unpack_from("!H", payload)
    if code not in _VALID_PEER_CODES and not 3000 <= code <= 4999:
        raise FrameError(CLOSE_PROTOCOL_ERROR, f"invalid close code {code}")
    try:
        reason = payload[2:].decode()
    except UnicodeDecodeError:
        raise FrameError(CLOSE_INVALID_PAYLOAD, "close reason is not UTF-8") from None
    return code, reason


def frame(opcode: int, payload: bytes) -> bytes:
    """One unmasked, final frame."""
    n = len(payload)
    if n < 126:
        return bytes((0x80 | opcode, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", 0x80 | opcode, 126, n) + payload
    return struct.pack("!BBQ", 0x80 | opcode, 127, n) + payload


def close_frame(code: int, reason: str) -> bytes:
    """A close frame; the reason is cut to 123 bytes of UTF-8 (with "..." when cut)."""
    data = reason.encode()
    if len(data) > MAX_REASON_BYTES:
        data = data[: MAX_REASON_BYTES - 3].decode(errors="ignore").encode() + b"..."
    return frame(OP_CLOSE, struct.pack("!H", code) + data)
