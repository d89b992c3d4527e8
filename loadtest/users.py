"""Locust users that behave like OpAMP agents: `WebSocketAgent` and `HttpAgent`.

Every message's round trip is reported through Locust's request event (request type `WS` or
`HTTP`, name `full report`, `heartbeat`, `config applying`, `config applied`), and every applied
config whose body carries the load test's timestamp as one `CONFIG convergence` sample: seconds
from the config's write to the agent applying it.
"""

from __future__ import annotations

import itertools
import logging
import random
import socket
import time
from collections import deque
from dataclasses import dataclass
from typing import Any, cast

import gevent
import websocket
from gevent.socket import wait_read
from locust import FastHttpUser, User, constant, task
from locust.env import Environment

from gateway.proto import opamp_pb2 as pb
from harness.agent import Reaction, SimAgent

logger = logging.getLogger("loadtest.users")

OPAMP_PATH = "/v1/opamp"
PROTOBUF = "application/x-protobuf"
# Linux: bind() picks the source port at connect() time, per destination, so thousands of sockets
# can share one source address without reserving its ports for every destination.
_IP_BIND_ADDRESS_NO_PORT = 24
_counter = itertools.count()
# Every agent this process simulated, for --uid-file.
AGENTS: list[SimAgent] = []


class Phase:
    """Requests made while Locust still spawns users are named `<name> (ramp)`, so the statistics of
    the steady fleet (and the verdict on them) do not mix with the cost of connecting it."""

    ramping = True


class ServerRefused(Exception):
    """The server answered with an error_response, or an HTTP error status."""


class NoReply(Exception):
    """A message went unanswered for longer than --reply-timeout."""


@dataclass(frozen=True)
class Options:
    targets: tuple[tuple[str, int], ...]
    heartbeat: float
    reply_timeout: float
    agent_key: str
    request_uid_ratio: float
    source_addresses: int

    @classmethod
    def of(cls, environment: Environment) -> Options:
        parsed = environment.parsed_options
        raw = getattr(parsed, "opamp_targets", "") or ""
        targets = tuple(_host_port(item) for item in raw.split(",") if item.strip())
        if not targets and environment.host:
            targets = (_host_port(environment.host),)
        if not targets:
            raise ValueError("--opamp-targets: give at least one gateway as host:port")
        return cls(
            targets=targets,
            heartbeat=float(getattr(parsed, "heartbeat_interval", 30.0)),
            reply_timeout=float(getattr(parsed, "reply_timeout", 30.0)),
            agent_key=str(getattr(parsed, "agent_key", "") or ""),
            request_uid_ratio=float(getattr(parsed, "request_uid_ratio", 0.0)),
            source_addresses=int(getattr(parsed, "source_addresses", 4096)),
        )


def _host_port(item: str) -> tuple[str, int]:
    text = item.strip().removeprefix("http://").removeprefix("ws://").split("/", 1)[0]
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--opamp-targets: {item!r} is not host:port")
    return host, int(port)


def source_address(n: int, count: int) -> str:
    """The n-th of `count` loopback addresses from 127.1.0.1 up (servers keep 127.0.0.1 to
    themselves); the last octet skips 0 and 255."""
    offset = n % max(1, count)
    return f"127.{1 + offset // 65024}.{(offset // 254) % 256}.{1 + offset % 254}"


class _Agent:
    """What both users share: the options, the simulated agent, and reporting to Locust."""

    environment: Environment
    options: Options
    agent: SimAgent
    target: tuple[str, int]
    number: int

    def _setup(self, environment: Environment) -> None:
        self.options = Options.of(environment)
        # Locust numbers workers from 0; agents on different workers go to different gateways.
        worker = getattr(environment.runner, "worker_index", 0) or 0
        self.number = next(_counter) + worker
        self.target = self.options.targets[(self.number) % len(self.options.targets)]
        self.agent = SimAgent(index=self.number, request_uid=random.random() < self.options.request_uid_ratio)
        AGENTS.append(self.agent)

    def _report(self, kind: str, name: str, started: float, length: int, error: Exception | None) -> None:
        self.environment.events.request.fire(
            request_type=kind,
            name=f"{name} (ramp)" if Phase.ramping else name,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=length,
            exception=error,
            context={},
        )

    def _converged(self, reaction: Reaction) -> None:
        if reaction.applied is not None and reaction.applied[1] is not None:
            self.environment.events.request.fire(
                request_type="CONFIG",
                name="convergence",
                response_time=reaction.applied[1] * 1000,
                response_length=0,
                exception=None,
                context={},
            )

    def _auth(self) -> list[str]:
        return [f"Authorization: Bearer {self.options.agent_key}"] if self.options.agent_key else []


class WebSocketAgent(_Agent, User):
    """An agent on one WebSocket: replies and pushes arrive on the same socket."""

    wait_time = constant(0)

    def __init__(self, environment: Environment) -> None:
        User.__init__(self, environment)
        self._setup(environment)
        self.ws: websocket.WebSocket | None = None
        # (message name, time sent, bytes) for each message still waiting for its reply
        self.pending: deque[tuple[str, float, int]] = deque()
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
            for name, started, _ in self.pending:
                self._report("WS", name, started, 0, exc)
            if not self.pending:
                self._report("WS", "connection", time.perf_counter(), 0, exc)
            self.pending.clear()
            self._close()
            self.agent.full_report_due = True
            gevent.sleep(wait * (0.5 + random.random()))

    def _connect(self) -> None:
        host, port = self.target
        started = time.perf_counter()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_IP, _IP_BIND_ADDRESS_NO_PORT, 1)
            sock.bind((source_address(self.number, self.options.source_addresses), 0))
            sock.settimeout(self.options.reply_timeout)
            sock.connect((host, port))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            ws = websocket.WebSocket(enable_multithread=False, skip_utf8_validation=True)
            ws.connect(f"ws://{host}:{port}{OPAMP_PATH}", socket=sock, header=self._auth())
        except BaseException:
            sock.close()
            raise
        self.ws = ws
        self._report("WS", "connect", started, 0, None)

    def _close(self) -> None:
        if self.ws is not None:
            try:
                self.ws.close(timeout=1)
            except (OSError, websocket.WebSocketException):
                pass
            self.ws = None

    def _send(self, name: str, msg: pb.AgentToServer) -> None:
        assert self.ws is not None
        payload = b"\x00" + msg.SerializeToString()
        self.pending.append((name, time.perf_counter(), len(payload)))
        self.ws.send_binary(payload)

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
            name, started, _ = self.pending.popleft()
            refused = (
                ServerRefused(reply.error_response.error_message)
                if reply.HasField("error_response")
                else None
            )
            self._report("WS", name, started, len(data), refused)
        reaction = self.agent.react(reply)
        self._converged(reaction)
        if reaction.restart:
            self._report("WS", "restart command", time.perf_counter(), 0, None)
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


class HttpAgent(_Agent, FastHttpUser):
    """An agent polling over plain HTTP: one POST per message on a kept-alive connection."""

    wait_time = constant(0)
    network_timeout = 60.0
    connection_timeout = 60.0
    # Locust's host is not used: each agent posts to its gateway from --opamp-targets.
    host = "http://127.0.0.1"

    def __init__(self, environment: Environment) -> None:
        FastHttpUser.__init__(self, environment)
        self._setup(environment)
        self.next_poll = time.monotonic()
        self.started = False

    @task
    def poll(self) -> None:
        if not self.started:
            self.started = True
            retry = self._post(*self.agent.next_message())
            self.next_poll = time.monotonic() + (retry or self.options.heartbeat * random.random())
            return
        delay = self.next_poll - time.monotonic()
        if delay > 0:
            gevent.sleep(delay)
        retry = self._post(*self.agent.next_message())
        self.next_poll = time.monotonic() + (retry or self.options.heartbeat)

    def _post(self, name: str, msg: pb.AgentToServer) -> float | None:
        """Send one message and what it calls for at once; the wait the server asked for, if any."""
        host, port = self.target
        headers = {"Content-Type": PROTOBUF}
        if self.options.agent_key:
            headers["Authorization"] = f"Bearer {self.options.agent_key}"
        queue: list[tuple[str, pb.AgentToServer]] = [(name, msg)]
        while queue:
            name, msg = queue.pop(0)
            reply = self._exchange(f"http://{host}:{port}{OPAMP_PATH}", name, msg, headers)
            if isinstance(reply, float):
                self.agent.full_report_due = True
                return reply
            reaction = self.agent.react(reply)
            self._converged(reaction)
            if reaction.retry_after is not None:
                return reaction.retry_after
            queue += reaction.send
        return None

    def _exchange(
        self, url: str, name: str, msg: pb.AgentToServer, headers: dict[str, str]
    ) -> pb.ServerToAgent | float:
        response: Any
        with self.client.post(
            # Locust annotates data as text, but bytes go out unchanged.
            url,
            data=cast(Any, msg.SerializeToString()),
            headers=headers,
            name=f"{name} (ramp)" if Phase.ramping else name,
            catch_response=True,
        ) as response:
            if response.status_code in (429, 503):
                response.failure(ServerRefused(f"HTTP {response.status_code}"))
                return _retry_after(response.headers.get("Retry-After"))
            if response.status_code != 200:
                response.failure(ServerRefused(f"HTTP {response.status_code}: {response.text[:200]}"))
                return 5.0
            reply = pb.ServerToAgent.FromString(response.content)
            if reply.HasField("error_response"):
                response.failure(ServerRefused(reply.error_response.error_message))
            else:
                response.success()
            return reply


def _retry_after(value: str | None) -> float:
    try:
        return max(0.0, float(value)) if value else 1.0
    except ValueError:
        return 1.0
