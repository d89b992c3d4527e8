"""A scripted WebSocket server for one client on real loopback sockets: it answers the upgrade as
told, reads the client's frames (checking that they are masked) and writes server frames. Tests of
the lean load-test agent (loadtest/session.py) drive both sides from one thread: the handshake runs
on a thread of its own, since the client blocks until it is answered."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

from gateway.proto import opamp_pb2 as pb
from loadtest.frames import OP_BINARY
from loadtest.handshake import END_OF_HEAD, accept_for

# Given the client's Sec-WebSocket-Key, the bytes of the server's answer.
Answer = Callable[[bytes], bytes]


def switching(key: bytes) -> bytes:
    """A valid 101 answer to `key`."""
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept_for(key) + END_OF_HEAD
    )


def refusing(status: int, retry_after: str | None = None) -> Answer:
    def answer(_key: bytes) -> bytes:
        hint = f"Retry-After: {retry_after}\r\n" if retry_after else ""
        return f"HTTP/1.1 {status} No\r\nContent-Length: 3\r\n{hint}\r\nno\n".encode()

    return answer


class Peer:
    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.conn: socket.socket | None = None
        # The client's upgrade request, as it came.
        self.request = b""
        self._thread: threading.Thread | None = None

    def answer_in_background(self, answer: Answer = switching) -> None:
        self._thread = threading.Thread(target=self._handshake, args=(answer,), daemon=True)
        self._thread.start()

    def joined(self) -> Peer:
        assert self._thread is not None
        self._thread.join(5)
        assert self.conn is not None, "no client connected"
        return self

    def _handshake(self, answer: Answer) -> None:
        self.listener.settimeout(5)
        conn, _ = self.listener.accept()
        conn.settimeout(5)
        while END_OF_HEAD not in self.request:
            self.request += conn.recv(4096)
        key = next(
            line.split(b":", 1)[1].strip()
            for line in self.request.split(b"\r\n")
            if line.lower().startswith(b"sec-websocket-key:")
        )
        conn.sendall(answer(key))
        self.conn = conn

    def _exactly(self, n: int) -> bytes:
        assert self.conn is not None
        data = b""
        while len(data) < n:
            chunk = self.conn.recv(n - len(data))
            assert chunk, "the client closed the connection"
            data += chunk
        return data

    def read_frame(self) -> tuple[int, bytes]:
        """The client's next frame as (opcode, unmasked payload); it must be final and masked."""
        first, second = self._exactly(2)
        assert first & 0x80, "a fragmented client frame"
        assert second & 0x80, "an unmasked client frame"
        n = second & 0x7F
        if n == 126:
            n = int.from_bytes(self._exactly(2), "big")
        elif n == 127:
            n = int.from_bytes(self._exactly(8), "big")
        mask = self._exactly(4)
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(self._exactly(n)))
        return first & 0x0F, payload

    def read_message(self) -> pb.AgentToServer:
        opcode, payload = self.read_frame()
        assert opcode == OP_BINARY and payload[:1] == b"\x00", (opcode, payload[:8])
        return pb.AgentToServer.FromString(payload[1:])

    def send_frame(self, opcode: int, payload: bytes, final: bool = True) -> None:
        assert self.conn is not None
        n = len(payload)
        first = (0x80 if final else 0) | opcode
        if n < 126:
            header = bytes((first, n))
        elif n < 1 << 16:
            header = bytes((first, 126)) + n.to_bytes(2, "big")
        else:
            header = bytes((first, 127)) + n.to_bytes(8, "big")
        self.conn.sendall(header + payload)

    def reply(self, msg: pb.ServerToAgent) -> None:
        self.send_frame(OP_BINARY, b"\x00" + msg.SerializeToString())

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.listener.close()
