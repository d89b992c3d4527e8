"""`WebSocketClientAgent`: the former WebSocket user, on `websocket-client`, kept to measure what the
lean `WebSocketAgent` saves (`python -m loadtest.run --transport websocket-client`). Same protocol
model and request names; it does not spread over other gateways after a failed connect."""

from __future__ import annotations

import random
import socket
import time
from collections import deque

import gevent
import websocket
from gevent.socket import wait_read
from locust import User, constant, task
from locust.env import Environment

from gateway.proto import opamp_pb2 as pb
from loadtest.options import OPAMP_PATH, source_address
from loadtest.session import NoReply, ServerRefused, refusal
from loadtest.users import AgentUser

# See loadtest/session.py.
_IP_BIND_ADDRESS_NO_PORT = 24


class WebSocketClientAgent(AgentUser, User):
    """An agent on one WebSocket: replies and pushes arrive on the same socket."""

    wait_time = constant(0)

    def __init__(self, environment: Environment) -> None:
        User.__init__(self, environment)
        self._setup(environment)
        self.ws: websocket.WebSocket | None = None
        # (message name, time sent) for each message still waiting for its reply
        self.pending: deque[tuple[str, float]] = deque()
        self.next_heartbeat = 0.0

    @task
    def live(self) -> None:
        """One connection's life: connect, report, heartbeat and react until it fails; then back off."""
        wait = 1.0
        try:
            self._connect()
            self._send(*self.agent.next_message())
            self.next_heartbeat = time.monotonic() + self.options.heartbeat * random.random()
            while True:
                wait = self._step()
        except (OSError, websocket.WebSocketException, NoReply, ServerRefused) as exc:
            for name, started in self.pending:
                self.request(name, started, 0, exc)
            if not self.pending:
                self.request("connection", time.perf_counter(), 0, exc)
            self.pending.clear()
            self._close()
            self.agent.full_report_due = True
            gevent.sleep(wait * (0.5 + random.random()))

    def _connect(self) -> None:
        host, port = self.targets.current
        started = time.perf_counter()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((source_address(self.number, self.options.source_addresses), 0))
            sock.settimeout(self.options.reply_timeout)
            sock.connect((host, port))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            ws = websocket.WebSocket(enable_multithread=False, skip_utf8_validation=True)
            header = [f"Authorization: Bearer {self.options.agent_key}"] if self.options.agent_key else []
            ws.connect(f"ws://{host}:{port}{OPAMP_PATH}", socket=sock, header=header)
        except BaseException:
            sock.close()
            raise
        self.ws = ws
        self.request("connect", started, 0, None)

    def _close(self) -> None:
        if self.ws is not None:
            try:
                self.ws.close(timeout=1)
            except (OSError, websocket.WebSocketException):
                pass
            self.ws = None

    def _send(self, name: str, msg: pb.AgentToServer) -> None:
        assert self.ws is not None
        self.pending.append((name, time.perf_counter()))
        self.ws.send_binary(b"\x00" + msg.SerializeToString())

    def _step(self) -> float:
        """Wait for a frame or the next heartbeat, whichever comes first; returns the back-off to use
        if the connection fails next."""
        assert self.ws is not None
        now = time.monotonic()
        if self.pending and time.perf_counter() - self.pending[0][1] > self.options.reply_timeout:
            raise NoReply(f"no reply to {self.pending[0][0]} in {self.options.reply_timeout:g} s")
        if now >= self.next_heartbeat:
            self.next_heartbeat = max(self.next_heartbeat + self.options.heartbeat, now)
            if not self.pending:
                self._send(*self.agent.next_message())
            return 1.0
        sock = self.ws.sock
        assert sock is not None
        try:
            wait_read(sock.fileno(), timeout=min(self.next_heartbeat - now, self.options.reply_timeout))
        except TimeoutError:
            return 1.0
        # One frame, control frames included: a plain recv() would answer the server's ping and then
        # block for the next data frame, and the agent would miss its heartbeats meanwhile.
        opcode, frame = self.ws.recv_data_frame(control_frame=True)
        if opcode in (websocket.ABNF.OPCODE_PING, websocket.ABNF.OPCODE_PONG):
            return 1.0
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            raise websocket.WebSocketConnectionClosedException(f"closed by the gateway: {frame.data[2:]!r}")
        data = frame.data
        if opcode != websocket.ABNF.OPCODE_BINARY or not data or data[0] != 0:
            raise ServerRefused(f"not an OpAMP frame: opcode {opcode}, {data[:16]!r}")
        reply = pb.ServerToAgent.FromString(data[1:])
        if self.pending:
            name, started = self.pending.popleft()
            self.request(name, started, len(data), refusal(reply))
        reaction = self.agent.react(reply)
        self.reacted(reaction)
        if reaction.retry_after is not None:
            # The gateway is shedding load: wait as told, then report in full again.
            gevent.sleep(reaction.retry_after)
            if not self.pending:
                self._send(*self.agent.next_message())
        for name, msg in reaction.send:
            self._send(name, msg)
        return reaction.retry_after or 1.0

    def on_stop(self) -> None:
        self._close()
