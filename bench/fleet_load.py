"""Idle agents heartbeating at their own pace: the load of `python -m bench fleet`.

Every agent sends one heartbeat per interval at its own random phase, as a fleet of collectors does,
and nothing else; the socket answers the server's pings (bench.ws_client). The generator has to cost
far less than the server it measures, so it is one timer per agent on the load core's loop, the
heartbeat encoded by hand (bench.ws_load.heartbeat_parts) and each reply compared byte for byte with
the one expected (only a reply that differs is decoded, to say what is wrong with it).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Sequence

from bench.ws_client import CLOSE_NORMAL, AgentSocket
from bench.ws_load import WsAgent, classify, heartbeat_parts
from gateway.opamp import framing
from harness.agent import SimAgent

logger = logging.getLogger("bench.fleet_load")

_EXAMPLES = 5


class Heartbeats:
    """Heartbeats on every socket of `fleet`, one per `interval` seconds each, from `start()` until
    `stop()`. `window()` opens a count of what is sent and answered; `closed` lists the sockets the
    server closed."""

    def __init__(self, fleet: Sequence[WsAgent], interval: float, track_uid: bool, seed: int = 7) -> None:
        self._fleet = list(fleet)
        self._interval = interval
        self._track_uid = track_uid
        self._rng = random.Random(seed)
        self._agents: dict[AgentSocket, SimAgent] = {item.sock: item.agent for item in fleet}
        self._parts = {item.sock: heartbeat_parts(item.agent) for item in fleet}
        self._timers: dict[AgentSocket, asyncio.TimerHandle] = {}
        self._running = False
        self.sent = 0
        self.replies = 0
        self.checks: Counter[str] = Counter()
        self.examples: list[str] = []

    def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._running = True
        now = loop.time()
        for item in self._fleet:
            item.sock.on_message = self._on_reply
            when = now + self._rng.uniform(0, self._interval)
            self._timers[item.sock] = loop.call_at(when, self._fire, item.sock, when)

    def stop(self) -> None:
        self._running = False
        for timer in self._timers.values():
            timer.cancel()
        self._timers = {}
        for item in self._fleet:
            item.sock.on_message = None

    def window(self) -> None:
        """Start counting afresh."""
        self.sent = self.replies = 0
        self.checks = Counter()
        self.examples = []

    def pings(self) -> int:
        return sum(item.sock.pings for item in self._fleet)

    def closed(self) -> list[WsAgent]:
        return [item for item in self._fleet if item.sock.close_code not in (None, CLOSE_NORMAL)]

    def _fire(self, sock: AgentSocket, when: float) -> None:
        if not self._running or not sock.open:
            return
        agent = self._agents[sock]
        agent.seq += 1
        before, after = self._parts[sock]
        self.sent += 1
        sock.sent_at = time.perf_counter()
        sock.send(before + framing.encode_varint(agent.seq) + after)
        # The next one an interval after this one was due, so a late timer does not shift the phase.
        due = when + self._interval
        self._timers[sock] = asyncio.get_running_loop().call_at(due, self._fire, sock, due)

    def _on_reply(self, sock: AgentSocket, message: bytes) -> None:
        self.replies += 1
        if message == sock.expected:
            self.checks["ok"] += 1
            return
        agent = self._agents[sock]
        why, detail = classify(message, agent.uid if self._track_uid else None)
        self.checks[why] += 1
        if len(self.examples) < _EXAMPLES:
            self.examples.append(f"agent {agent.index} seq {agent.seq}: {why}: {detail}")
