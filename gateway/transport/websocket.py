"""WebSocket OpAMP transport: GET /v1/opamp upgraded, binary messages `varint 0 || protobuf`.

The socket itself (frames, pings, closing handshake, flow control) is gateway/transport/
ws_protocol.py; this is what an agent's socket means to the node. `OpampEndpoint` decides whether an
upgrade is accepted, and a `Connection` serves the agents on one socket. It caches each agent's record
after the first message (kept current from every outcome), so a heartbeat costs no store read; and a
message that needs to wait for nothing (a heartbeat of a known agent, most replies) is handled and
answered inside the socket's `data_received`, with no task. A message that must wait (the first one,
which reads the store, or a write that must be committed before the reply) is handled by a task, and
the socket reads nothing more until it is done, so each socket has at most one message in flight. A
socket may carry several agents (a concentrating proxy): state and registration are per
instance_uid. Close codes the gateway sends:

- 1000 normal closure: the agent sent nothing for --idle-timeout seconds (at least 3 x
  --agent-heartbeat-interval); not a socket carrying an agent without ReportsHeartbeat, which
  speaks only when it has something to say and is alive while it answers pings.
- 1001 going away: the node drains (after a last ServerToAgent{Unavailable, retry_info}).
- 1002 protocol error: the client broke RFC 6455 (an unmasked frame, a bad opcode; ws_frames.py).
- 1003 unsupported data: a text message (OpAMP is binary only).
- 1007 invalid payload: a close frame whose reason is not UTF-8.
- 1008 policy violation: the agent key the socket authenticated with is no longer accepted (removed
  from the key file, or --strict-key-file with a broken file), at the next re-read; or a message
  spoke for an instance_uid bound to another agent key (counted in
  opamp_gateway_agent_key_mismatches_total; docs/security.md); or the agent's credentials changed so
  that the socket may no longer speak for it (per-agent credentials: revoked, the agent connected
  with its own credential elsewhere so its shared key is refused now, a credential replaced by a
  rotation; or a credential that spoke for another uid), at once, on whichever node holds it.
- 1009 message too big: over --max-message-bytes, header included (spec: SHOULD close with 1009),
  refused from the frame header before its payload is read.
- 1011 internal error: a server ping got no pong within --ws-ping-timeout.
- 1012 service restart: the node stops without a drain.
- 1013 try again later: the socket's instance_uid changed hands too often (gateway/node/duplicates.py);
  sent after the ServerToAgent{Unavailable, retry_info} and that many seconds of holding the socket, so
  a client that ignores retry_info (opamp-go) still waits.
- 4000 taken over: the same instance_uid connected again. On this node only when the older socket
  did not answer a probe (a genuine reconnect; while it is alive the newcomer is a clone and gets a
  new instance_uid, gateway/node/duplicates.py); on another node the newer connection wins. A
  private-use code (RFC 6455 7.4.2): this is neither a protocol error (1002) nor a policy violation
  of this connection (1008), and a distinct code lets clients and operators tell a
duplicate agent from a failing one.

A binary message that is not an AgentToServer (after an optional header 0, opamp/framing.py) is
answered with ServerErrorResponse{BadRequest} and the socket stays open (spec: bad request).

Upgrades are refused with 401 (no or a wrong agent key or agent credential; gateway/auth.py,
gateway/node/credentials.py) or 503 + Retry-After (draining, --max-connections open, or an agent
credential's record that cannot be read). A client that stops reading for --send-timeout is dropped
without a close frame: it would not read that either.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import uuid6
from google.protobuf.message import DecodeError
from starlette.datastructures import Headers

from gateway import limits
from gateway.auth import (
    AGENT_CHALLENGE,
    AGENT_DENIAL,
    AGENT_SCHEMES,
    KEY_MISMATCH,
    Credentials,
    KeyMatch,
    presented_key,
)
from gateway.fleet import credentials as agent_credentials
from gateway.fleet.agent import AgentState, uid_str
from gateway.fleet.credentials import OwnCredential
from gateway.limits import RETRY_AFTER_SECONDS, RETRY_JITTER_SECONDS
from gateway.node import duplicates
from gateway.node.push import Missing
from gateway.opamp import engine, framing, heartbeat
from gateway.opamp.push import Push
from gateway.proto import opamp_pb2 as pb
from gateway.store.base import StoreError
from gateway.store.writer import WriterFull, WriterStopped
from gateway.transport import pipeline, ws_frames
from gateway.transport.context import OpampNode
from gateway.transport.ws_handshake import Refusal, Request
from gateway.transport.ws_protocol import WebSocketProtocol

logger = logging.getLogger("gateway.transport.websocket")

CLOSE_NORMAL = ws_frames.CLOSE_NORMAL
CLOSE_GOING_AWAY = ws_frames.CLOSE_GOING_AWAY
CLOSE_PROTOCOL_ERROR = ws_frames.CLOSE_PROTOCOL_ERROR
CLOSE_UNSUPPORTED_DATA = ws_frames.CLOSE_UNSUPPORTED_DATA
CLOSE_INVALID_PAYLOAD = ws_frames.CLOSE_INVALID_PAYLOAD
CLOSE_TOO_BIG = ws_frames.CLOSE_TOO_BIG
CLOSE_TAKEN_OVER = 4000
CLOSE_TRY_AGAIN = 1013
# How often a probe of a socket (Connection.answers) looks for its answer.
_PROBE_POLL_SECONDS = 0.05
CLOSE_POLICY = 1008
# Fire-and-forget tasks must be referenced until they finish.
_background: set[asyncio.Task[None]] = set()


def _spawn(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
    task = asyncio.get_running_loop().create_task(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)
    return task


class _Damped(pipeline.Shed):
    """The uid changed hands too often: refuse the newcomer for `retry_after` seconds."""

    def __init__(self, retry_after: float) -> None:
        super().__init__("takeover_damped")
        self.retry_after = retry_after


class OpampEndpoint:
    """Accepts or refuses an upgrade on the OpAMP path, and makes the connection that serves it."""

    def __init__(
        self, node: OpampNode, credentials: Credentials, on_auth_failure: Callable[[str], None]
    ) -> None:
        self.path = "/v1/opamp"
        self._node = node
        self._credentials = credentials
        self._on_auth_failure = on_auth_failure
        credentials.on_change(self._revoke)

    def open(self, request: Request, socket: WebSocketProtocol) -> Connection | Awaitable[Connection]:
        match: KeyMatch | None = None
        if self._credentials.enabled:
            # Spec: 401 on failure, decided on the HTTP request, before the upgrade.
            key = presented_key(Headers(raw=request.headers), AGENT_SCHEMES)
            match = self._credentials.identify(key)
            if match is None:
                if key is not None and agent_credentials.looks_like(key):
                    # An agent's own credential: its record may have to be read first.
                    return self._open_own(key, socket)
                self._on_auth_failure("missing" if key is None else "invalid")
                raise Refusal(401, AGENT_DENIAL, dict(AGENT_CHALLENGE))
        return self._accepted(socket, match, None)

    async def _open_own(self, key: str, socket: WebSocketProtocol) -> Connection:
        try:
            own = await self._node.credentials.identify(key)
        except StoreError as exc:
            logger.warning("could not read an agent credential's record: %s", exc)
            raise self._shed(
                "store", "the agent credential could not be checked now", limits.retry_after()
            ) from exc
        if own is None:
            self._on_auth_failure("invalid")
            raise Refusal(401, AGENT_DENIAL, dict(AGENT_CHALLENGE))
        return self._accepted(socket, None, own)

    def _accepted(
        self, socket: WebSocketProtocol, match: KeyMatch | None, own: OwnCredential | None
    ) -> Connection:
        node = self._node
        if node.drain.draining:
            retry = random.randint(1, int(node.settings.drain_retry_window))
            raise self._shed("draining", "this node is draining: connect to another node", retry)
        if not node.limits.open_connection():
            text = f"this node holds its maximum of {node.limits.max_connections} WebSockets"
            raise self._shed("max_connections", text, limits.retry_after())
        return Connection(socket, node, match, own)

    def _revoke(self) -> None:
        """The keys changed: close every socket whose key is no longer accepted (1008)."""
        closed = 0
        sockets = [h for h in self._node.registry.sockets() if isinstance(h, Connection)]
        for conn in sockets:
            if conn.key is not None and not self._credentials.holds(conn.key.digest):
                conn.close(CLOSE_POLICY, "agent key revoked")
                closed += 1
        if closed:
            logger.warning("closed %d WebSockets whose agent key is no longer accepted", closed)

    def _shed(self, reason: str, text: str, retry: int) -> Refusal:
        """503 + Retry-After (spec: a server too loaded to upgrade)."""
        self._node.metrics.shed.labels(reason=reason).inc()
        return Refusal(503, text, {"Retry-After": str(retry)})


class Connection:
    """One socket: the records of the agents it carries, their registration. To the node it is a
    `Holder` (gateway/node/registry.py): what to push is decided there, this only sends. To its
    socket it is the `Session` (gateway/transport/ws_protocol.py)."""

    # A node holds one per socket, thousands of them: no instance dict, and the containers that are
    # almost always empty are created when first needed.
    __slots__ = (
        *("_socket", "_node", "_limit", "epoch", "_states", "_aliases", "_displaced", "_closed"),
        *("_inbox", "_worker", "key", "_own"),
    )

    def __init__(
        self,
        socket: WebSocketProtocol,
        node: OpampNode,
        key: KeyMatch | None = None,
        own: OwnCredential | None = None,
    ) -> None:
        self._socket = socket
        # The agent key the socket authenticated with (None with authentication off, or `own`).
        self.key = key
        # The agent credential it authenticated with instead (per-agent credentials).
        self._own = own
        self._node = node
        self._limit = node.settings.max_message_bytes
        # Identifies this connection in owner records: a node never closes a newer connection.
        self.epoch = uuid6.uuid7().hex
        # The agents on this socket, by the uid each record lives under.
        self._states: dict[bytes, AgentState] = {}
        # uid an agent still sends -> uid its record moved to (until the agent adopts it).
        self._aliases: dict[bytes, bytes] = {}
        # Agents another node took over: their newer record is written there, not from here.
        self._displaced: set[bytes] | None = None
        self._closed = False
        # While a message is handled by a task: the messages that arrived meanwhile (the socket
        # stops reading, so at most what one read delivered).
        self._inbox: deque[bytes] | None = None
        self._worker: asyncio.Task[None] | None = None
        node.registry.attach(self)

    @property
    def uids(self) -> list[bytes]:
        return list(self._states)

    @property
    def key_id(self) -> str | None:
        """The id of the agent key this socket authenticated with (None with agent keys off, or with
        an agent's own credential)."""
        return None if self.key is None else self.key.key_id

    @property
    def own(self) -> OwnCredential | None:
        return self._own

    @property
    def authenticated(self) -> bool:
        return self.key is not None or self._own is not None

    # -- the socket's session ---------------------------------------------------------------------

    def on_message(self, data: bytes) -> None:
        if self._inbox is not None:
            self._inbox.append(data)
            return
        started = time.perf_counter()
        msg = self._decode(data)
        if msg is None:
            return
        node = self._node
        uid = msg.instance_uid
        key = self._aliases.get(uid, uid)
        state = self._states.get(key)
        # A cached record was accepted for this socket's key; one that is not (it cannot be, short of
        # a bug) takes the path that refuses it. So does an agent whose credential record this node
        # has no copy of (it is read first).
        credential = node.credentials.peek(key)
        if (
            state is None
            or node.config_cache.stale()
            or not engine.may_speak_for(state, self.key_id)
            or isinstance(credential, Missing)
        ):
            self._wait(self._handle_decoded(msg, started))
            return
        node.limits.track_message()
        try:
            outcome = pipeline.decide(
                node, state, msg, "websocket", key_id=self.key_id, credential=credential, own=self._own
            )
            if outcome.forbidden:
                node.limits.end_message()
                self.close(CLOSE_POLICY, outcome.refusal or KEY_MISMATCH)
                return
            write = outcome.write
            admitted = write is not None and node.liveness.admit(write)
            if outcome.credential is not None or (admitted and outcome.durable):
                node.limits.end_message()
                self._wait(self._finish_durable(msg, key, outcome, started, admitted))
                return
            if admitted:
                pipeline.store(node, outcome)
            pipeline.observe(node, outcome, msg)
        except pipeline.Shed as exc:
            node.limits.end_message()
            self._shed(msg, exc, started)
            return
        node.limits.end_message()
        self._track(msg, key, outcome)
        self._reply(outcome.reply, "rejected" if outcome.rejected else "ok", started)

    def on_text(self) -> None:
        self.close(CLOSE_UNSUPPORTED_DATA, "OpAMP uses binary WebSocket messages only")

    def on_idle(self) -> None:
        if any(not heartbeat.heartbeats_expected(s.capabilities) for s in self._states.values()):
            # An agent without ReportsHeartbeat speaks only when it has something to say; its socket
            # answers pings (the keepalive sweep drops it otherwise), so it is alive, not idle.
            return
        self._node.metrics.client_timeouts.labels(kind="idle").inc()
        self.close(CLOSE_NORMAL, f"idle: no message for {self._node.settings.ws_idle_timeout:g}s")

    def on_stalled(self) -> None:
        self._closed = True
        self._node.metrics.client_timeouts.labels(kind="send").inc()
        logger.info("dropped a WebSocket whose client read nothing for %gs", self._node.settings.send_timeout)

    def on_closed(self) -> None:
        self._closed = True
        node = self._node
        node.registry.detach(self)
        node.limits.close_connection()
        # Spec 3.4: when the stream closes, forget every agent it carried.
        for uid in list(self._states):
            self._forget(uid, displaced=self._displaced is not None and uid in self._displaced)

    # -- messages that wait -----------------------------------------------------------------------

    def _wait(self, first: Awaitable[None]) -> None:
        """Handle a message in a task; the socket reads nothing more until it and the messages
        already read after it are done."""
        self._inbox = deque()
        self._socket.hold_reading(True)
        self._worker = _spawn(self._work(first))

    async def _work(self, first: Awaitable[None]) -> None:
        try:
            await first
            while self._inbox and not self._closed:
                data = self._inbox.popleft()
                msg = self._decode(data)
                if msg is not None:
                    await self._handle_decoded(msg, time.perf_counter())
        finally:
            self._inbox = None
            self._worker = None
            self._socket.hold_reading(False)

    async def _handle_decoded(self, msg: pb.AgentToServer, started: float) -> None:
        node = self._node
        node.limits.track_message()
        try:
            outcome = await self._process(msg)
        except _Damped as exc:
            node.limits.end_message()
            self._shed(msg, exc, started)
            # Holding the socket (it reads nothing meanwhile) is what slows a client that ignores
            # retry_info: it reconnects only once the socket closes.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._socket.wait_closed(), exc.retry_after)
            self.close(CLOSE_TRY_AGAIN, "instance_uid changed hands too often: try again later")
            return
        except pipeline.Shed as exc:
            self._shed(msg, exc, started)
            return
        finally:
            node.limits.end_message()
        if outcome.forbidden:
            # Nothing was stored or registered: the socket that spoke for another key's agent goes
            # (or with a credential that may not speak for it).
            self.close(CLOSE_POLICY, outcome.refusal or KEY_MISMATCH)
            return
        self._reply(outcome.reply, "rejected" if outcome.rejected else "ok", started)

    async def _finish_durable(
        self,
        msg: pb.AgentToServer,
        key: bytes,
        outcome: engine.Outcome,
        started: float,
        admitted: bool = True,
    ) -> None:
        node = self._node
        node.limits.track_message()
        try:
            if admitted:
                await pipeline.store_durable(node, outcome)
            await pipeline.commit_credential(node, outcome)
        except pipeline.Shed as exc:
            self._shed(msg, exc, started)
            return
        finally:
            node.limits.end_message()
        pipeline.observe(node, outcome, msg)
        self._track(msg, key, outcome)
        self._reply(outcome.reply, "rejected" if outcome.rejected else "ok", started)

    async def _process(self, msg: pb.AgentToServer) -> engine.Outcome:
        uid = msg.instance_uid
        key = self._aliases.get(uid, uid)
        state = self._states.get(key)
        # A cached record is never re-read per message: commands another node stored for it arrive
        # through the bus or the node's periodic sweep (command_sweep.py).
        clone = False
        if state is None:
            # A socket with an agent's own credential is that agent: never taken for a clone.
            clone = key == uid and self._own is None and await self._is_clone(uid)
            if clone:
                # The first agent keeps its record; this one is enrolled under a uid of its own.
                msg = duplicates.as_clone(msg)
            else:
                state = self._node.liveness.fresher(await pipeline.load_state(self._node, msg))
            if state is not None:
                state = engine.on_new_connection(state)
        outcome = await pipeline.process(
            self._node,
            state,
            msg,
            "websocket",
            admit=self._node.liveness.admit,
            duplicate_of=uid if clone else None,
            key_id=self.key_id,
            own=self._own,
        )
        self._track(msg, key, outcome)
        if clone and outcome.state is not None:
            self._node.metrics.duplicates.labels(transport="websocket").inc()
            logger.info(
                "duplicate instance_uid %s: a live agent holds it; the newcomer now has %s",
                uid_str(uid),
                uid_str(outcome.state.instance_uid),
            )
        return outcome

    async def _is_clone(self, uid: bytes) -> bool:
        """Whether `uid`, new on this socket, is held by another live socket on this node (a clone);
        raises _Damped if it may not change hands now."""
        registry = self._node.registry
        held = registry.get(uid)
        if held is None or held is self or len(uid) != engine.UID_LENGTH:
            return False
        holding = held.state(uid)
        if holding is not None and not engine.may_speak_for(holding, self.key_id):
            # Another key's agent: the engine refuses the message, no uid of its own is handed out.
            return False
        alive = await held.answers(duplicates.RECENT_SECONDS, duplicates.PROBE_SECONDS)
        if registry.get(uid) is not held:
            # It left (or was taken over) while probed: no one to clone.
            return False
        now = time.monotonic()
        verdict = duplicates.verdict(alive, registry.takeovers, uid, now)
        if verdict == "refused":
            retry = max(1.0, registry.takeovers.retry_after(uid, now)) + random.uniform(0, 1)
            raise _Damped(retry)
        return verdict == "clone"

    # -- incoming ---------------------------------------------------------------------------------

    def _decode(self, data: bytes) -> pb.AgentToServer | None:
        """The message in `data`; None (and the socket closing) if it is not one."""
        try:
            return pb.AgentToServer.FromString(framing.decode(data, self._limit))
        except framing.MessageTooLarge as exc:
            self.close(CLOSE_TOO_BIG, str(exc))
        except DecodeError:
            # Spec: a malformed message is answered with BadRequest; the socket stays.
            self._reply(engine.undecodable(), "rejected", time.perf_counter())
        return None

    def _shed(self, msg: pb.AgentToServer, exc: pipeline.Shed, started: float) -> None:
        self._node.metrics.shed.labels(reason=exc.reason).inc()
        if isinstance(exc, _Damped):
            retry = exc.retry_after
        else:
            retry = RETRY_AFTER_SECONDS + random.uniform(0, RETRY_JITTER_SECONDS)
        reply = engine.unavailable(msg.instance_uid, f"service unavailable: {exc.reason}", retry)
        self._reply(reply, "unavailable", started)

    def _reply(self, reply: pb.ServerToAgent, result: str, started: float) -> None:
        self._send(reply)
        self._node.metrics.handled("websocket", result, time.perf_counter() - started)

    def _track(self, msg: pb.AgentToServer, key: bytes, outcome: engine.Outcome) -> None:
        """Keep the cache and the registration in step with what the message did."""
        uid = msg.instance_uid
        new = outcome.state
        if (
            outcome.event == "heartbeat"
            and new is not None
            and not self._aliases
            and uid == key == new.instance_uid
            and key in self._states
        ):
            # The common case, in short: a registered agent under its own uid, nothing else moved.
            self._states[key] = new
            return
        if msg.HasField("agent_disconnect"):
            # Spec 3.4: forget the association between this agent and the stream.
            self._forget(key)
            self._aliases.pop(uid, None)
            return
        if new is None:
            return
        current = new.instance_uid
        if current != key:
            # RequestInstanceUid: the registration moves to the new uid.
            self._forget(key)
        if uid != current:
            self._aliases[uid] = current
        else:
            for old in [old for old, target in self._aliases.items() if target == current]:
                del self._aliases[old]
        known = current in self._states
        self._states[current] = new
        if not known:
            self._register(current)

    def _register(self, uid: bytes) -> None:
        node = self._node
        displaced = node.registry.register(uid, self)
        if displaced is not None:
            node.metrics.takeovers.labels(scope="local").inc()
            _spawn(displaced.taken_over(uid, "a newer connection to this node"))
        node.presence.claim(uid, self)

    def _forget(self, uid: bytes, *, displaced: bool = False) -> None:
        state = self._states.pop(uid, None)
        if state is None:
            return
        if self._node.registry.unregister(uid, self):
            self._node.presence.release(uid, self)
            self._node.liveness.release(state, write=not displaced)

    # -- outgoing ---------------------------------------------------------------------------------

    def _send(self, reply: pb.ServerToAgent) -> bool:
        body = reply.SerializeToString()
        if len(body) > self._limit:
            # Spec: never send a message over the limit; say why instead of silently dropping it.
            logger.error("dropped a %d-byte message over the %d-byte limit", len(body), self._limit)
            body = engine.reply_too_large(reply.instance_uid)
        return not self._closed and self._socket.send(framing.encode(body))

    def state(self, uid: bytes) -> AgentState | None:
        return None if self._closed else self._states.get(uid)

    def alive(self, uid: bytes, now: float) -> AgentState | None:
        state = None if self._closed else self._states.get(uid)
        if state is None:
            return None
        state = state.touched(now, state.sequence_num)
        self._states[uid] = state
        return state

    async def send(self, push: Push) -> bool:
        uid = push.state.instance_uid
        if self._closed or uid not in self._states:
            return False
        if not self._send(push.reply):
            return False
        self._states[uid] = push.state
        if not self._node.liveness.admit(push.write):
            return True
        try:
            if push.durable:
                await self._node.writer.submit_durable(push.write)
            else:
                self._node.writer.submit(push.write)
        except (WriterFull, WriterStopped, StoreError):
            pass
        return True

    async def answers(self, recent: float, within: float) -> bool:
        """Whether the peer is alive: heard from within `recent` seconds, busy with a message, or
        answering a ping within `within` seconds."""
        socket = self._socket
        loop = asyncio.get_running_loop()
        start = loop.time()
        if self._closed or not socket.open:
            return False
        if self._worker is not None or start - socket.last_received < recent:
            return True
        socket.ping(b"duplicate-probe", start)
        deadline = start + within
        while not self._closed and loop.time() < deadline:
            await asyncio.sleep(_PROBE_POLL_SECONDS)
            if socket.last_received > start:
                return not self._closed
        return False

    async def taken_over(self, uid: bytes, where: str) -> None:
        if uid not in self._states:
            return
        logger.info(
            "agent connected again via %s; dropping this connection",
            where,
            extra={"instance_uid": uid_str(uid)},
        )
        if len(self._states) > 1:
            # A multiplexing proxy: the socket's other agents stay.
            self._forget(uid, displaced=True)
            return
        if self._displaced is None:
            self._displaced = set()
        self._displaced.add(uid)
        self.close(CLOSE_TAKEN_OVER, f"taken over: {uid_str(uid)} connected again via {where}")

    async def refuse(self, uid: bytes, reason: str) -> None:
        if uid not in self._states:
            return
        if len(self._states) > 1:
            # A multiplexing proxy: the socket's other agents stay; a next message for this one takes
            # the path that reads its record and refuses it.
            self._forget(uid)
            for old in [old for old, target in self._aliases.items() if target == uid]:
                del self._aliases[old]
            return
        self.close(CLOSE_POLICY, reason)

    async def drain(self, retry_after: float) -> None:
        for uid in list(self._states):
            if self._closed:
                break
            self._send(engine.unavailable(uid, "this gateway node is shutting down; reconnect", retry_after))
        self.close(CLOSE_GOING_AWAY, "gateway node draining: reconnect to another node")
        await self._socket.wait_closed()

    def close(self, code: int, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        self._node.metrics.websocket_closes.labels(code=str(code)).inc()
        self._socket.close(code, reason)
