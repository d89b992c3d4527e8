"""WebSocket OpAMP transport: GET /v1/opamp upgraded, binary messages `varint 0 || protobuf`.

One `Connection` per socket. It caches each agent's record after the first message (kept current from
every outcome), so a heartbeat costs no store read. A socket may carry several agents (a
concentrating proxy): state and registration are per instance_uid. Close codes the gateway sends:

- 1000 normal closure: the agent sent nothing for --idle-timeout seconds.
- 1001 going away: the node drains (after a last ServerToAgent{Unavailable, retry_info}).
- 1003 unsupported data: a text message (OpAMP is binary only).
- 1009 message too big: over --max-message-bytes, header included (spec: SHOULD close with 1009).

A binary message that is not an AgentToServer (after an optional header 0, opamp/framing.py) is
answered with ServerErrorResponse{BadRequest} and the socket stays open (spec: bad request).
- 4000 taken over: the same instance_uid connected again, here or on another node; the newer
  connection wins. A private-use code (RFC 6455 7.4.2): this is neither a protocol error (1002) nor a
  policy violation of this connection (1008), and a distinct code lets clients and operators tell a
  duplicate agent from a failing one.

Upgrades are refused before accept with 401 (no or a wrong agent key; gateway/auth.py) or 503 +
Retry-After (draining, or --max-connections open). A client that stops reading for --send-timeout
is dropped without a close frame: it would not read that either.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Coroutine
from typing import Any

import uuid6
from google.protobuf.message import DecodeError
from starlette.responses import PlainTextResponse
from starlette.types import Message
from starlette.websockets import WebSocket, WebSocketDisconnect

from gateway import limits
from gateway.fleet.agent import AgentState, uid_str
from gateway.limits import RETRY_AFTER_SECONDS, RETRY_JITTER_SECONDS
from gateway.opamp import engine, framing
from gateway.opamp.push import Push
from gateway.proto import opamp_pb2 as pb
from gateway.store.base import StoreError
from gateway.store.writer import WriterFull, WriterStopped
from gateway.transport import pipeline
from gateway.transport.context import OpampNode, node_of

logger = logging.getLogger("gateway.transport.websocket")

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED_DATA = 1003
CLOSE_TOO_BIG = 1009
CLOSE_TAKEN_OVER = 4000
# RFC 6455: a close reason is at most 123 bytes of UTF-8.
_REASON_BYTES = 123
# Fire-and-forget tasks (closing a displaced socket) must be referenced until they finish.
_background: set[asyncio.Task[None]] = set()


class _IdleTimeout(Exception):
    """The client sent nothing for --idle-timeout seconds."""


def _spawn(coro: Coroutine[Any, Any, None]) -> None:
    task = asyncio.create_task(coro)
    _background.add(task)
    task.add_done_callback(_background.discard)


def _reason(text: str) -> str:
    data = text.encode()
    if len(data) <= _REASON_BYTES:
        return text
    return data[: _REASON_BYTES - 3].decode(errors="ignore") + "..."


async def _refuse(websocket: WebSocket, node: OpampNode, reason: str, text: str, retry: int) -> None:
    """Refuse the upgrade with 503 + Retry-After (spec: a server too loaded to upgrade)."""
    node.metrics.shed.labels(reason=reason).inc()
    await websocket.send_denial_response(
        PlainTextResponse(text + "\n", status_code=503, headers={"Retry-After": str(retry)})
    )


async def opamp_websocket(websocket: WebSocket) -> None:
    node = node_of(websocket)
    if node.drain.draining:
        retry = random.randint(1, int(node.settings.drain_retry_window))
        await _refuse(websocket, node, "draining", "this node is draining: connect to another node", retry)
        return
    if not node.limits.open_connection():
        text = f"this node holds its maximum of {node.limits.max_connections} WebSockets"
        await _refuse(websocket, node, "max_connections", text, limits.retry_after())
        return
    try:
        await websocket.accept()
        await Connection(websocket, node).serve()
    finally:
        node.limits.close_connection()


class Connection:
    """One socket: its timers, the records of the agents it carries, their registration. To the node
    it is a `Holder` (gateway/node/registry.py): what to push is decided there, this only sends."""

    # A node holds one per socket, thousands of them: no instance dict, and the sets that are
    # almost always empty are created when first needed.
    __slots__ = (
        *("_ws", "_node", "_limit", "_idle_timeout", "_send_timeout", "epoch", "_states", "_aliases"),
        *("_displaced", "_closed", "_loop", "_task", "_waiting_since", "_idle_expired", "_idle_timer"),
        "_expired_sends",
    )

    def __init__(self, websocket: WebSocket, node: OpampNode) -> None:
        self._ws = websocket
        self._node = node
        self._limit = node.settings.max_message_bytes
        self._idle_timeout = node.settings.idle_timeout or None
        self._send_timeout = node.settings.send_timeout
        # Identifies this connection in owner records: a node never closes a newer connection.
        self.epoch = uuid6.uuid7().hex
        # The agents on this socket, by the uid each record lives under.
        self._states: dict[bytes, AgentState] = {}
        # uid an agent still sends -> uid its record moved to (until the agent adopts it).
        self._aliases: dict[bytes, bytes] = {}
        # Agents another node took over: their newer record is written there, not from here.
        self._displaced: set[bytes] | None = None
        self._closed = False
        # The idle timeout without a timer per message (asyncio.wait_for made a Task per receive,
        # ~10 µs): one timer per connection, re-armed when it fires early (see _check_idle).
        self._loop = asyncio.get_running_loop()
        self._task: asyncio.Task[Any] | None = None
        self._waiting_since: float | None = None
        self._idle_expired = False
        self._idle_timer: asyncio.TimerHandle | None = None
        # Tasks whose send the send timeout cancelled (see _send).
        self._expired_sends: set[asyncio.Task[Any]] | None = None

    @property
    def uids(self) -> list[bytes]:
        return list(self._states)

    async def serve(self) -> None:
        registry = self._node.registry
        registry.attach(self)
        self._task = asyncio.current_task()
        if self._idle_timeout is not None:
            self._idle_timer = self._loop.call_later(self._idle_timeout, self._check_idle)
        try:
            while not self._closed:
                try:
                    message = await self._receive()
                except _IdleTimeout:
                    self._node.metrics.client_timeouts.labels(kind="idle").inc()
                    await self.close(CLOSE_NORMAL, f"idle: no message for {self._idle_timeout:g}s")
                    break
                if message["type"] == "websocket.disconnect":
                    break
                if not await self._on_message(message):
                    break
        finally:
            if self._idle_timer is not None:
                self._idle_timer.cancel()
            registry.detach(self)
            # Spec 3.4: when the stream closes, forget every agent it carried.
            for uid in list(self._states):
                self._forget(uid, displaced=self._displaced is not None and uid in self._displaced)

    async def _receive(self) -> Message:
        """The next message; _IdleTimeout once the wait for it has lasted --idle-timeout."""
        self._waiting_since = self._loop.time()
        try:
            return await self._ws.receive()
        except asyncio.CancelledError:
            # Ours (the idle timer's) unless someone else cancelled the task as well: theirs wins.
            if self._idle_expired and self._task is not None and self._task.uncancel() == 0:
                raise _IdleTimeout from None
            raise
        finally:
            self._waiting_since = None

    def _check_idle(self) -> None:
        """The idle timer: cancel the wait for a message once it has lasted --idle-timeout, else
        re-arm for when it would (a message arrived since the timer was set)."""
        assert self._idle_timeout is not None
        now = self._loop.time()
        since = self._waiting_since
        deadline = (now if since is None else since) + self._idle_timeout
        if since is None or now < deadline:
            self._idle_timer = self._loop.call_at(deadline, self._check_idle)
            return
        self._idle_timer = None
        if self._task is not None:
            self._idle_expired = True
            self._task.cancel()

    # -- incoming ---------------------------------------------------------------------------------

    async def _on_message(self, message: Message) -> bool:
        """Handle one message; False once the socket is closed."""
        if message.get("text") is not None:
            await self.close(CLOSE_UNSUPPORTED_DATA, "OpAMP uses binary WebSocket messages only")
            return False
        started = time.perf_counter()
        try:
            msg = pb.AgentToServer.FromString(framing.decode(message.get("bytes") or b"", self._limit))
        except framing.MessageTooLarge as exc:
            await self.close(CLOSE_TOO_BIG, str(exc))
            return False
        except DecodeError:
            # Spec: a malformed message is answered with BadRequest; the socket stays.
            sent = await self._send(engine.undecodable())
            self._node.metrics.handled("websocket", "rejected", time.perf_counter() - started)
            return sent
        metrics = self._node.metrics
        self._node.limits.track_message()
        try:
            outcome = await self._process(msg)
            reply, result = outcome.reply, "rejected" if outcome.rejected else "ok"
        except pipeline.Shed as exc:
            metrics.shed.labels(reason=exc.reason).inc()
            retry = RETRY_AFTER_SECONDS + random.uniform(0, RETRY_JITTER_SECONDS)
            reply = engine.unavailable(msg.instance_uid, f"service unavailable: {exc.reason}", retry)
            result = "unavailable"
        finally:
            self._node.limits.end_message()
        sent = await self._send(reply)
        metrics.handled("websocket", result, time.perf_counter() - started)
        return sent

    async def _process(self, msg: pb.AgentToServer) -> engine.Outcome:
        uid = msg.instance_uid
        key = self._aliases.get(uid, uid)
        state = self._states.get(key)
        # A cached record is never re-read per message: commands another node stored for it arrive
        # through the bus or the node's periodic sweep (command_sweep.py).
        if state is None:
            state = self._node.liveness.fresher(await pipeline.load_state(self._node, msg))
            if state is not None:
                state = engine.on_new_connection(state)
        outcome = await pipeline.process(self._node, state, msg, "websocket", admit=self._node.liveness.admit)
        self._track(msg, key, outcome)
        return outcome

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

    async def _send(self, reply: pb.ServerToAgent) -> bool:
        body = reply.SerializeToString()
        if len(body) > self._limit:
            # Spec: never send a message over the limit; say why instead of silently dropping it.
            logger.error("dropped a %d-byte message over the %d-byte limit", len(body), self._limit)
            body = engine.reply_too_large(reply.instance_uid)
        # A send waits only while the peer does not read (flow control). The timeout is a bare timer
        # that cancels this task, not wait_for (a Task per send) nor asyncio.timeout (twice this
        # cost): it is armed once per message.
        task = asyncio.current_task()
        assert task is not None
        timer = self._loop.call_later(self._send_timeout, self._send_expired, task)
        try:
            await self._ws.send_bytes(framing.encode(body))
        except (WebSocketDisconnect, RuntimeError):
            # RuntimeError: Starlette or uvicorn refusing a send after a close (ours or the peer's).
            return False
        except asyncio.CancelledError:
            if self._expired_sends is None or task not in self._expired_sends:
                raise
            self._expired_sends.discard(task)
            if task.uncancel() > 0:
                # Cancelled from elsewhere as well: that wins.
                raise
            # The peer stopped reading: a close frame would wait behind the same full buffer.
            self._closed = True
            self._node.metrics.client_timeouts.labels(kind="send").inc()
            logger.info("dropped a WebSocket whose client read nothing for %gs", self._send_timeout)
            return False
        finally:
            timer.cancel()
        return True

    def _send_expired(self, task: asyncio.Task[Any]) -> None:
        if self._expired_sends is None:
            self._expired_sends = set()
        self._expired_sends.add(task)
        task.cancel()

    def state(self, uid: bytes) -> AgentState | None:
        return None if self._closed else self._states.get(uid)

    async def send(self, push: Push) -> bool:
        uid = push.state.instance_uid
        if self._closed or uid not in self._states:
            return False
        if not await self._send(push.reply):
            return False
        self._states[uid] = push.state
        if not self._node.liveness.admit(push.write):
            return True
        with contextlib.suppress(WriterFull, WriterStopped, StoreError):
            if push.durable:
                await self._node.writer.submit_durable(push.write)
            else:
                self._node.writer.submit(push.write)
        return True

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
        await self.close(CLOSE_TAKEN_OVER, f"taken over: {uid_str(uid)} connected again via {where}")

    async def drain(self, retry_after: float) -> None:
        for uid in list(self._states):
            # Its other agents may have left (or the socket closed) while an earlier send waited.
            if self._closed or uid not in self._states:
                continue
            await self._send(
                engine.unavailable(uid, "this gateway node is shutting down; reconnect", retry_after)
            )
        await self.close(CLOSE_GOING_AWAY, "gateway node draining: reconnect to another node")

    async def close(self, code: int, reason: str) -> None:
        if self._closed:
            return
        self._closed = True
        self._node.metrics.websocket_closes.labels(code=str(code)).inc()
        try:
            await self._ws.close(code, _reason(reason))
        except (WebSocketDisconnect, RuntimeError):
            pass
