"""Locust users that behave like OpAMP agents: `WebSocketAgent` (the lean one, on plain sockets:
loadtest/session.py, run by one driver greenlet per process: loadtest/driver.py) and `HttpAgent`;
`WebSocketGreenletAgent` (each agent waiting in its own greenlet) and `WebSocketClientAgent`
(loadtest/websocket_client_user.py) are former WebSocket users, kept to compare costs.

Every message's round trip is reported through Locust's request event (request type `WS` or
`POST`, name `connect`, `full report`, `heartbeat`, `config applying`, `config applied`), and every
applied config whose body carries the load test's timestamp as one `CONFIG convergence` sample:
seconds from the config's write to the agent applying it.
"""

from __future__ import annotations

import itertools
import logging
import random
import time
from typing import Any, cast

import gevent
from locust import FastHttpUser, User, constant, task
from locust.env import Environment

from gateway.proto import opamp_pb2 as pb
from harness.agent import Reaction, SimAgent
from loadtest.driver import DRIVER
from loadtest.hubwait import HubWait
from loadtest.options import OPAMP_PATH, Options, Targets, source_address
from loadtest.session import Readable, ServerRefused, WsSession

logger = logging.getLogger("loadtest.users")

PROTOBUF = "application/x-protobuf"
_counter = itertools.count()
# Every agent this process simulated, for --uid-file.
AGENTS: list[SimAgent] = []


class Phase:
    """Requests made while Locust still spawns users are named `<name> (ramp)`, so the statistics of
    the steady fleet (and the verdict on them) do not mix with the cost of connecting it."""

    ramping = True


class AgentUser:
    """What every user shares: the options, the simulated agent, its gateways, reporting to Locust."""

    environment: Environment
    options: Options
    agent: SimAgent
    targets: Targets
    number: int
    # The request type of this user's messages.
    kind = "WS"

    def _setup(self, environment: Environment) -> None:
        self.options = Options.of(environment)
        # Locust numbers workers from 0; agents on different workers go to different gateways.
        worker = getattr(environment.runner, "worker_index", 0) or 0
        self.number = next(_counter) + worker
        self.targets = Targets(self.options.targets, self.number)
        self.agent = SimAgent(index=self.number, request_uid=random.random() < self.options.request_uid_ratio)
        AGENTS.append(self.agent)

    def request(self, name: str, started: float, length: int, error: Exception | None) -> None:
        self.environment.events.request.fire(
            request_type=self.kind,
            name=f"{name} (ramp)" if Phase.ramping else name,
            response_time=(time.perf_counter() - started) * 1000,
            response_length=length,
            exception=error,
            context={},
        )

    def reacted(self, reaction: Reaction) -> None:
        if reaction.applied is not None and reaction.applied[1] is not None:
            self.environment.events.request.fire(
                request_type="CONFIG",
                name="convergence",
                response_time=reaction.applied[1] * 1000,
                response_length=0,
                exception=None,
                context={},
            )
        if reaction.restart:
            self.request("restart command", time.perf_counter(), 0, None)


class _WebSocketUser(AgentUser, User):
    """An agent on one WebSocket: replies and pushes arrive on the same socket."""

    abstract = True
    wait_time = constant(0)

    def __init__(self, environment: Environment) -> None:
        User.__init__(self, environment)
        self._setup(environment)
        source = source_address(self.number, self.options.source_addresses)
        self.session = WsSession(self.agent, self.options, self, self.targets, source, self._readable())

    def _readable(self) -> Readable | None:
        """How the session waits on its socket itself (None: it does not, the driver does)."""
        return None

    def on_stop(self) -> None:
        self.session.close()


class WebSocketAgent(_WebSocketUser):
    """The user connects; while connected, the process's driver (loadtest/driver.py) runs its
    session and the user parks until the session fails."""

    @task
    def live(self) -> None:
        self.session.live(DRIVER.drive)


class WebSocketGreenletAgent(_WebSocketUser):
    """The same agent waiting on its own socket in its own greenlet (`--transport
    websocket-greenlet`): the former lean user, kept to compare costs."""

    def _readable(self) -> Readable | None:
        return HubWait()

    @task
    def live(self) -> None:
        self.session.live()


class HttpAgent(AgentUser, FastHttpUser):
    """An agent polling over plain HTTP: one POST per message on a kept-alive connection."""

    kind = "POST"
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
        headers = {"Content-Type": PROTOBUF}
        if self.options.agent_key:
            headers["Authorization"] = f"Bearer {self.options.agent_key}"
        queue: list[tuple[str, pb.AgentToServer]] = [(name, msg)]
        while queue:
            name, msg = queue.pop(0)
            host, port = self.targets.current
            reply = self._exchange(f"http://{host}:{port}{OPAMP_PATH}", name, msg, headers)
            if isinstance(reply, float):
                self.agent.full_report_due = True
                return reply
            reaction = self.agent.react(reply)
            self.reacted(reaction)
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
            if response.status_code == 0:
                # No HTTP answer at all (refused, reset): that gateway is gone; try another one.
                response.failure(ServerRefused(f"no answer: {response.error!r}"))
                self.targets.move()
                return 0.5 + random.random()
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
