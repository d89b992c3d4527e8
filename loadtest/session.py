"""The lean WebSocket agent's connection life, on plain sockets: connect (from its own source
address), upgrade, send its messages as pre-encoded frames, read the server's frames, answer them as
`harness.agent.SimAgent` says, and report every message's round trip to a `Reporter`.

No Locust and no gevent import: under Locust, gevent's monkey patching makes `socket` and
`time.sleep` cooperative (both are looked up when called); in unit tests they are the standard
library's. Everything but the heartbeat comes from the model; the heartbeat comes from
`loadtest.heartbeat`, byte for byte what the model would send.
"""

from __future__ import annotations

import contextlib
import random
import select
import socket
import time
from collections import deque
from collections.abc import Callable
from typing import Protocol

from gateway.proto import opamp_pb2 as pb
from harness.agent import Reaction, SimAgent
from loadtest.frames import (
    OP_BINARY,
    OP_CLOSE,
    OP_PING,
    OP_PONG,
    FrameReader,
    ProtocolError,
    binary_frame,
    client_frame,
    close_payload,
)
from loadtest.handshake import (
    END_OF_HEAD,
    MAX_HEAD,
    HandshakeError,
    UpgradeRefused,
    check_answer,
    new_key,
    upgrade_request,
)
from loadtest.heartbeat import Heartbeats, next_frame
from loadtest.options import OPAMP_PATH, Options, Targets

# Linux: bind() picks the source port at connect() time, per destination, so thousands of sockets
# can share one source address without reserving its ports for every destination.
_IP_BIND_ADDRESS_NO_PORT = 24
_RECV_BYTES = 65536
_CLOSE_NORMAL = (1000).to_bytes(2, "big")


class ServerRefused(Exception):
    """The server answered with an error_response, or an HTTP error status."""


class NoReply(Exception):
    """A message went unanswered for longer than --reply-timeout."""


class ConnectionClosed(Exception):
    """The server closed the WebSocket (close frame) or the TCP connection."""


def refusal(reply: pb.ServerToAgent) -> ServerRefused | None:
    """The failure a reply reports for the message it answers: its error_response, if any."""
    return ServerRefused(reply.error_response.error_message) if reply.HasField("error_response") else None


class Readable(Protocol):
    def __call__(self, sock: socket.socket, timeout: float) -> bool:
        """Wait until `sock` has bytes to read (True) or `timeout` seconds passed (False)."""

    def release(self) -> None:
        """Forget the socket waited on last: it is about to be closed."""


class SelectReadable:
    """The portable wait (standard library, or gevent's patched select)."""

    def __call__(self, sock: socket.socket, timeout: float) -> bool:
        return bool(select.select([sock], [], [], max(0.0, timeout))[0])

    def release(self) -> None:
        """Nothing is held between waits."""


# What ends a connection's life (and is reported as a failure); anything else is a bug.
FAILURES = (OSError, ProtocolError, HandshakeError, NoReply, ServerRefused, ConnectionClosed)


class Reporter(Protocol):
    def request(self, name: str, started: float, length: int, error: Exception | None) -> None:
        """One message's round trip (or failure): `started` is its time.perf_counter() when sent."""

    def reacted(self, reaction: Reaction) -> None:
        """What the agent did about a reply (a config applied, a restart command)."""


class WsSession:
    """One simulated agent on one WebSocket at a time."""

    def __init__(
        self,
        agent: SimAgent,
        options: Options,
        reporter: Reporter,
        targets: Targets,
        source: str | None,
        readable: Readable | None = None,
    ) -> None:
        self.agent = agent
        self._readable: Readable = readable if readable is not None else SelectReadable()
        self.options = options
        self.targets = targets
        self._reporter = reporter
        self._source = source
        self._sock: socket.socket | None = None
        self._reader = FrameReader()
        # Bytes that came in with the handshake's answer, not read as frames yet.
        self._backlog = b""
        self._heartbeats = Heartbeats()
        # (request name, time.perf_counter() when sent) of every message waiting for its reply:
        # the server answers each message once, in order.
        self.pending: deque[tuple[str, float]] = deque()
        self.next_heartbeat = 0.0
        # When a wait the server asked for (retry_info) ends (time.monotonic()), 0.0 when none.
        self.resume_at = 0.0
        # The back-off to use if the connection fails next: the server's retry hint, else 1 s.
        self.backoff = 1.0

    def live(self, drive: Callable[[WsSession], float] | None = None) -> None:
        """One connection's life: connect, report, heartbeat and react until it fails, then back
        off (as long as the server said, if it did). `drive` runs the connected session and returns
        the back-off once it has failed (loadtest/driver.py: one greenlet for every session of a
        process); without it, this greenlet waits on the socket itself (`step`)."""
        if not self.open():
            return
        backoff = 1.0
        try:
            self.start()
            if drive is not None:
                backoff = drive(self)
            else:
                while True:
                    backoff = self.step()
        except FAILURES as exc:
            self.fail(exc)
        time.sleep(backoff * (0.5 + random.random()))

    def start(self) -> None:
        """Send the first message (a full report) and schedule the first heartbeat at a random point
        of the first interval, so a fleet that connects at once does not beat in step."""
        self._send(*next_frame(self.agent, self._heartbeats))
        self.next_heartbeat = time.monotonic() + self.options.heartbeat * random.random()

    def close(self) -> None:
        """Say goodbye with a close frame (best effort) and drop the socket."""
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.sendall(client_frame(OP_CLOSE, _CLOSE_NORMAL))
        self._drop()

    def _drop(self) -> None:
        if self._sock is not None:
            self._readable.release()
            self._sock.close()
            self._sock = None

    def open(self) -> bool:
        """Connect and upgrade; on failure, report it, move to another gateway and back off."""
        started = time.perf_counter()
        try:
            self._connect()
        except FAILURES as exc:
            self._drop()
            self._reporter.request("connect", started, 0, exc)
            self.targets.move()
            hint = exc.retry_after if isinstance(exc, UpgradeRefused) else None
            time.sleep(max(0.1, hint) if hint is not None else 0.5 + random.random())
            return False
        self._reporter.request("connect", started, 0, None)
        return True

    def _connect(self) -> None:
        host, port = self.targets.current
        sock = self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if self._source:
            sock.setsockopt(socket.SOL_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((self._source, 0))
        sock.settimeout(self.options.reply_timeout)
        sock.connect((host, port))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        key = new_key()
        sock.sendall(upgrade_request(host, port, OPAMP_PATH, key, self.options.agent_key))
        answer = bytearray()
        while (end := answer.find(END_OF_HEAD)) < 0:
            if len(answer) > MAX_HEAD:
                raise HandshakeError(f"no end of the answer's head in {len(answer)} bytes")
            data = sock.recv(_RECV_BYTES)
            if not data:
                raise ConnectionClosed(f"closed during the handshake after {bytes(answer[:80])!r}")
            answer += data
        check_answer(bytes(answer[:end]), key)
        self._reader = FrameReader()
        self._backlog = bytes(answer[end + len(END_OF_HEAD) :])

    def _send(self, name: str, frame: bytes) -> None:
        self.pending.append((name, time.perf_counter()))
        self._write(frame)

    def _write(self, data: bytes) -> None:
        sock = self._sock
        assert sock is not None
        # Not sendall: gevent's asks the kernel for the send buffer size (getsockopt) on every call,
        # and a frame of a few bytes goes out in one send() but when the buffer is full.
        sent = sock.send(data)
        if sent < len(data):
            sock.sendall(data[sent:])

    def step(self) -> float:
        """Wait for frames or the next heartbeat, whichever comes first; the back-off to use if the
        connection fails next."""
        self.backoff = 1.0
        now = time.monotonic()
        if now < self.due(now):
            data, self._backlog = self._backlog, b""
            if not data:
                sock = self._sock
                assert sock is not None
                # Wait first, then read: a read that finds nothing raises (EAGAIN) inside gevent.
                if not self._readable(sock, min(self.due(now) - now, self.options.reply_timeout)):
                    return self.tick(time.monotonic())
                data = sock.recv(_RECV_BYTES)
            self.received(data)
        if self.resume_at:
            # The gateway is shedding load: wait as told, then report in full again.
            time.sleep(max(0.0, self.resume_at - time.monotonic()))
        self.tick(time.monotonic())
        return self.backoff

    def due(self, now: float) -> float:
        """When (time.monotonic(), `now` being the present) something falls due next: a heartbeat,
        the end of a retry wait, or --reply-timeout for the message waiting longest."""
        due = self.next_heartbeat
        resume = self.resume_at
        if resume and resume < due:
            due = resume
        pending = self.pending
        if pending:
            # Sent on time.perf_counter()'s clock: how long it may still wait, from now.
            left = pending[0][1] + self.options.reply_timeout - time.perf_counter()
            due = min(due, now + max(0.0, left))
        return due

    def tick(self, now: float) -> float:
        """Do what has fallen due by `now` (time.monotonic()): fail a message left unanswered past
        --reply-timeout, end a retry wait with a full report, send a heartbeat. Returns the back-off
        to use if the connection fails next."""
        pending = self.pending
        if pending and time.perf_counter() - pending[0][1] > self.options.reply_timeout:
            raise NoReply(f"no reply to {pending[0][0]} in {self.options.reply_timeout:g} s")
        if self.resume_at and now >= self.resume_at:
            self.resume_at = 0.0
            if not pending:
                self._send(*next_frame(self.agent, self._heartbeats))
        if now >= self.next_heartbeat:
            self.next_heartbeat = max(self.next_heartbeat + self.options.heartbeat, now)
            self.backoff = 1.0
            if not pending and not self.resume_at:
                self._send(*next_frame(self.agent, self._heartbeats))
        return self.backoff

    def received(self, data: bytes) -> None:
        """Answer the frames in `data` (bytes read from the socket, possibly part of a frame)."""
        if not data:
            raise ConnectionClosed("the gateway closed the connection without a close frame")
        for opcode, payload in self._reader.feed(data):
            self._on_message(opcode, payload)

    @property
    def connection(self) -> socket.socket | None:
        """The connected socket, if any."""
        return self._sock

    def take_backlog(self) -> bytes:
        """Bytes that came in with the handshake's answer and are not read as frames yet."""
        data, self._backlog = self._backlog, b""
        return data

    def replace_socket(self, sock: socket.socket) -> socket.socket:
        """Use `sock` (the same connection, e.g. as a non-blocking standard socket) from now on;
        returns the one it replaces."""
        old, self._sock = self._sock, sock
        assert old is not None
        return old

    def _on_message(self, opcode: int, payload: bytes) -> None:
        if opcode == OP_BINARY and payload[:1] == b"\x00":
            self._on_reply(payload)
            return
        assert self._sock is not None
        if opcode == OP_PING:
            self._sock.sendall(client_frame(OP_PONG, payload))
            return
        if opcode == OP_PONG:
            return
        if opcode == OP_CLOSE:
            code, reason = close_payload(payload)
            # RFC 6455 5.5.1: answer a close with a close (echoing its code), then drop the socket.
            with contextlib.suppress(OSError):
                self._sock.sendall(client_frame(OP_CLOSE, payload[:2]))
            raise ConnectionClosed(f"closed by the gateway: {code} {reason!r}")
        raise ServerRefused(f"not an OpAMP frame: opcode {opcode}, {payload[:16]!r}")

    def _on_reply(self, payload: bytes) -> None:
        reply = pb.ServerToAgent.FromString(payload[1:])
        if self.pending:
            name, started = self.pending.popleft()
            self._reporter.request(name, started, len(payload), refusal(reply))
        reaction = self.agent.react(reply)
        self._reporter.reacted(reaction)
        if reaction.retry_after is not None:
            # The gateway is shedding load: the full report waits as long as it said (`tick`).
            self.resume_at = time.monotonic() + reaction.retry_after
            self.backoff = reaction.retry_after or 1.0
        if reaction.send:
            # The messages of one reaction (APPLYING and APPLIED) in one write: the frames and their
            # order are the same, each still timed as a request of its own, for one system call.
            started = time.perf_counter()
            self.pending.extend((name, started) for name, _ in reaction.send)
            self._write(b"".join(binary_frame(b"\x00" + msg.SerializeToString()) for _, msg in reaction.send))

    def fail(self, exc: Exception) -> None:
        """Every message still waiting fails with `exc` (or the connection does, if none was); the
        next connection starts with a full report."""
        for name, started in self.pending:
            self._reporter.request(name, started, 0, exc)
        if not self.pending:
            self._reporter.request("connection", time.perf_counter(), 0, exc)
        self.pending.clear()
        self._drop()
        self.agent.full_report_due = True
