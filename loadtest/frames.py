"""WebSocket frames as the lean agent writes and reads them (RFC 6455 section 5), without I/O.

Client frames must be masked. A mask key of four zero bytes is a valid key and leaves the payload
unchanged (5.3), so a frame is its header, four zero bytes and the payload as it is: nothing to
XOR, and headers for small payloads are encoded once. Server frames are read by `FrameReader` from
whatever the socket returned, a frame split over reads or several frames in one read alike.
"""

from __future__ import annotations

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA
_FIN = 0x80
_MASKED = 0x80
_ZERO_MASK = b"\x00\x00\x00\x00"
# Control frames carry at most 125 bytes and are never fragmented (5.5).
_MAX_CONTROL = 125
# The most a server message may grow to while fragments arrive: far above any OpAMP reply we expect.
MAX_MESSAGE = 64 * 1024 * 1024
# Header (FIN, opcode, mask bit, length) + zero mask of every binary frame under 126 bytes: a
# heartbeat is one of these.
_SMALL_BINARY = tuple(bytes((_FIN | OP_BINARY, _MASKED | n)) + _ZERO_MASK for n in range(126))


class ProtocolError(Exception):
    """The server broke RFC 6455 framing (or sent what an OpAMP agent cannot take)."""


def client_frame(opcode: int, payload: bytes) -> bytes:
    """One final, masked client frame (zero mask) carrying `payload`."""
    n = len(payload)
    if opcode == OP_BINARY and n < 126:
        return _SMALL_BINARY[n] + payload
    if opcode >= OP_CLOSE and n > _MAX_CONTROL:
        raise ValueError(f"a control frame carries at most {_MAX_CONTROL} bytes, not {n}")
    first = _FIN | opcode
    if n < 126:
        header = bytes((first, _MASKED | n))
    elif n < 1 << 16:
        header = bytes((first, _MASKED | 126)) + n.to_bytes(2, "big")
    else:
        header = bytes((first, _MASKED | 127)) + n.to_bytes(8, "big")
    return header + _ZERO_MASK + payload


def binary_frame(payload: bytes) -> bytes:
    return client_frame(OP_BINARY, payload)


def close_payload(payload: bytes) -> tuple[int | None, str]:
    """(status code, reason) of a close frame's payload; no code if it is empty."""
    if len(payload) < 2:
        return None, ""
    return int.from_bytes(payload[:2], "big"), payload[2:].decode(errors="replace")


class FrameReader:
    """Server frames out of a byte stream: `feed` returns every complete message so far as (opcode,
    payload). Fragmented messages come out whole, under their first frame's opcode; control frames
    in between come out on their own, as RFC 6455 allows."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        # The opcode and parts of a fragmented message still waiting for its final frame.
        self._opcode: int | None = None
        self._parts: list[bytes] = []
        self._size = 0

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buffer = self._buffer
        buffer += data
        out: list[tuple[int, bytes]] = []
        while True:
            frame = self._frame(buffer)
            if frame is None:
                return out
            message = self._message(*frame)
            if message is not None:
                out.append(message)

    @staticmethod
    def _frame(buffer: bytearray) -> tuple[bool, int, bytes] | None:
        """The first complete frame in `buffer` (removed from it) as (final, opcode, payload)."""
        have = len(buffer)
        if have < 2:
            return None
        first, second = buffer[0], buffer[1]
        if first & 0x70:
            raise ProtocolError(f"reserved bits set (no extension was negotiated): {first:#04x}")
        if second & _MASKED:
            raise ProtocolError("a server frame is masked (RFC 6455 5.1 forbids it)")
        n, start = second & 0x7F, 2
        if n == 126:
            if have < 4:
                return None
            n, start = int.from_bytes(buffer[2:4], "big"), 4
        elif n == 127:
            if have < 10:
                return None
            n, start = int.from_bytes(buffer[2:10], "big"), 10
        if n > MAX_MESSAGE:
            raise ProtocolError(f"a frame of {n} bytes is over the limit of {MAX_MESSAGE}")
        end = start + n
        if have < end:
            return None
        payload = bytes(buffer[start:end])
        del buffer[:end]
        return bool(first & _FIN), first & 0x0F, payload

    def _message(self, final: bool, opcode: int, payload: bytes) -> tuple[int, bytes] | None:
        if opcode >= OP_CLOSE:
            if not final or len(payload) > _MAX_CONTROL:
                raise ProtocolError(f"control frame {opcode:#x}: fragmented or {len(payload)} bytes long")
            return opcode, payload
        if opcode == OP_CONTINUATION:
            if self._opcode is None:
                raise ProtocolError("a continuation frame without a message to continue")
        elif opcode in (OP_TEXT, OP_BINARY):
            if self._opcode is not None:
                raise ProtocolError("a new data frame while a fragmented message is unfinished")
            if final:
                return opcode, payload
            self._opcode = opcode
        else:
            raise ProtocolError(f"reserved opcode {opcode:#x}")
        self._size += len(payload)
        if self._size > MAX_MESSAGE:
            raise ProtocolError(f"a fragmented message over the limit of {MAX_MESSAGE} bytes")
        self._parts.append(payload)
        if not final:
            return None
        whole = (self._opcode, b"".join(self._parts))
        self._opcode, self._parts, self._size = None, [], 0
        return whole
