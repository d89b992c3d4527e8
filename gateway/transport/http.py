"""Plain-HTTP OpAMP transport: POST /v1/opamp with a protobuf body, one ServerToAgent back.

`OpampHttp` is a bare ASGI app (http_wire.py moves the bytes): app.py routes POST /v1/opamp to it
ahead of Starlette, so it checks the agent key itself. Every other request on the port (the
WebSocket upgrade, health, other methods on the path) still goes through Starlette.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from google.protobuf.message import DecodeError
from starlette.types import Receive, Scope, Send

from gateway import limits
from gateway.auth import (
    AGENT_CHALLENGE,
    AGENT_DENIAL,
    AGENT_SCHEMES,
    KEY_MISMATCH,
    Credentials,
    KeyMatch,
    key_in,
)
from gateway.fleet import credentials as agent_credentials
from gateway.fleet.agent import AgentState, uid_str
from gateway.fleet.credentials import AgentCredential, OwnCredential
from gateway.node import duplicates
from gateway.node.push import Missing
from gateway.opamp import engine
from gateway.proto import opamp_pb2 as pb
from gateway.store.base import StoreError
from gateway.transport import pipeline
from gateway.transport.context import OpampNode
from gateway.transport.http_wire import (
    BadEncoding,
    BodyTooLarge,
    ClientGone,
    Reply,
    RequestHeaders,
    accepts_gzip,
    gunzip,
    media_type,
    protobuf_reply,
    read_body,
    request_headers,
    send_reply,
    text_reply,
)
from gateway.transport.read_deadlines import ReadDeadlines

__all__ = ["BadEncoding", "BodyTooLarge", "OpampHttp", "accepts_gzip", "gunzip"]

logger = logging.getLogger("gateway.transport.http")

PROTOBUF = "application/x-protobuf"
_ENCODINGS = ("identity", "gzip", "x-gzip")
# Reads the request body, refusing one over the limit it is given.
BodyReader = Callable[[int], Awaitable[bytes]]


def _saw(node: OpampNode, outcome: engine.Outcome) -> None:
    """Remember when each HTTP agent last polled this node (its "connected agents" gauge)."""
    new = outcome.state
    if new is None:
        return
    if outcome.write is not None and outcome.write.previous_uid is not None:
        # A moved agent is one agent: the uid it leaves must not count as a second one.
        node.registry.saw_http(outcome.write.previous_uid, None)
    # The engine stamps every record it returns with the message's time.
    node.registry.saw_http(new.instance_uid, None if new.disconnected else new.last_seen)


class OpampHttp:
    """POST /v1/opamp on one node: `answer` decides the reply to a request; the port's protocol
    (http_protocol.py) calls it with the body already read, and `__call__` is the same over ASGI for
    the requests the protocol leaves to uvicorn (chunked or oversized bodies, Expect: 100-continue,
    pipelined behind another request)."""

    def __init__(
        self, node: OpampNode, credentials: Credentials, on_auth_failure: Callable[[str], None]
    ) -> None:
        self._node = node
        self._credentials = credentials
        self._on_auth_failure = on_auth_failure
        # A client that trickles its body (slowloris) must not hold a slot in flight for ever.
        self._deadlines = ReadDeadlines(node.settings.read_timeout)

    @property
    def limit(self) -> int:
        """The largest request body taken (--max-message-bytes)."""
        return self._node.settings.max_message_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = request_headers(scope["headers"])

        def read(limit: int) -> Awaitable[bytes]:
            return self._deadlines.run(read_body(receive, headers.content_length, limit))

        await send_reply(send, await self.answer(headers, read))

    def answer_read(self, headers: RequestHeaders, body: bytes) -> Reply | Coroutine[Any, Any, Reply]:
        """The reply to a request whose whole body has arrived. A message the node can decide at
        once (nearly every heartbeat: its agent's record and credential record are in memory, the
        fleet's config is fresh) is decided here and its reply returned, unless its write must be
        committed first (then a coroutine finishes it); everything else is `answer`'s."""
        started = time.perf_counter()
        ready = self._ready(headers, body)
        node = self._node
        if ready is None or not node.limits.begin_message():
            # Anything that needs a closer look, a store read or a refusal (the same checks again).
            return self.answer(headers, body)
        msg, state, key_id, credential = ready
        settling = False
        try:
            outcome = pipeline.decide(node, state, msg, "http", _saw, key_id=key_id, credential=credential)
            write = outcome.write
            admitted = write is not None and node.liveness.admit_http(write)
            if outcome.credential is not None or (admitted and outcome.durable):
                settling = True
                return self._settle(msg, outcome, admitted, headers, started)
            if admitted:
                pipeline.store(node, outcome)
            pipeline.observe(node, outcome, msg)
            reply = self._reply_for(outcome, headers)
        except pipeline.Shed as exc:
            reply = self._unavailable(exc.reason)
        finally:
            if not settling:
                node.limits.end_message()
        node.metrics.handled("http", str(reply.status), time.perf_counter() - started)
        return reply

    def _ready(
        self, headers: RequestHeaders, body: bytes
    ) -> tuple[pb.AgentToServer, AgentState, str | None, AgentCredential | None] | None:
        """The message, its agent's record and credential record and the agent key's id, if the
        request is a well-formed message on an agent key for an agent whose records this node holds
        and nothing must be read first; None sends it the whole way (`answer`), where every
        refusal and read is."""
        node = self._node
        key_id: str | None = None
        if self._credentials.enabled:
            match = self._credentials.identify(key_in(headers.authorization, AGENT_SCHEMES))
            if match is None:
                return None
            key_id = match.key_id
        if (
            headers.content_encoding != "identity"
            or len(body) > node.settings.max_message_bytes
            or (headers.content_type != PROTOBUF and media_type(headers.content_type) != PROTOBUF)
            or node.config_cache.stale()
        ):
            return None
        try:
            msg = pb.AgentToServer.FromString(body)
        except DecodeError:
            return None
        state = node.writer.peek(msg.instance_uid)
        if state is None or len(msg.instance_uid) != engine.UID_LENGTH:
            return None
        if engine.may_speak_for(state, key_id) and duplicates.http_clone(state, msg):
            return None
        credential = node.credentials.fresh(state.instance_uid)
        if isinstance(credential, Missing):
            return None
        return msg, state, key_id, credential

    async def _settle(
        self,
        msg: pb.AgentToServer,
        outcome: engine.Outcome,
        admitted: bool,
        headers: RequestHeaders,
        started: float,
    ) -> Reply:
        """The rest of `answer_read` for a decided message whose write is committed before its reply
        (design principle 4), or whose credential record changed."""
        node = self._node
        try:
            await pipeline.settle(node, outcome, admitted)
            pipeline.observe(node, outcome, msg)
            reply = self._reply_for(outcome, headers)
        except pipeline.Shed as exc:
            reply = self._unavailable(exc.reason)
        finally:
            node.limits.end_message()
        node.metrics.handled("http", str(reply.status), time.perf_counter() - started)
        return reply

    def _reply_for(self, outcome: engine.Outcome, headers: RequestHeaders) -> Reply:
        """The HTTP reply of a decided message."""
        if outcome.forbidden:
            # The key (or credential) is valid, but not for this agent: the same 401 as a wrong key
            # (spec: 401 on failed authentication), with a message that says which rule refused it.
            return text_reply(401, outcome.refusal or KEY_MISMATCH, AGENT_CHALLENGE)
        reply = outcome.reply.SerializeToString()
        limit = self._node.settings.max_message_bytes
        if len(reply) > limit:
            # Spec: never send a message over the limit; say why instead of silently dropping it.
            logger.error("dropped a %d-byte reply over the %d-byte limit", len(reply), limit)
            reply = engine.reply_too_large(outcome.reply.instance_uid)
        return protobuf_reply(reply, headers.accept_encoding)

    async def answer(self, headers: RequestHeaders, source: BodyReader | bytes) -> Reply:
        """The reply to one request with these headers. `source` is the body when it has all
        arrived, else a reader: `source(limit)` gives the body (BodyTooLarge, BadEncoding,
        ClientGone, TimeoutError), and is called only once the key is checked."""
        key_id: str | None = None
        own: OwnCredential | None = None
        if self._credentials.enabled:
            try:
                match, own = await self._identify(headers)
            except StoreError as exc:
                # The agent's credential record could not be read: neither yes nor no.
                logger.warning("could not read an agent credential's record: %s", exc)
                reply = self._unavailable("store")
                self._node.metrics.handled("http", str(reply.status), 0.0)
                return reply
            if match is None and own is None:
                return text_reply(401, AGENT_DENIAL, AGENT_CHALLENGE)
            key_id = None if match is None else match.key_id
        started = time.perf_counter()
        reply = await self._handle(headers, source, key_id, own)
        self._node.metrics.handled("http", str(reply.status), time.perf_counter() - started)
        return reply

    async def _identify(self, headers: RequestHeaders) -> tuple[KeyMatch | None, OwnCredential | None]:
        """An agent key, or an agent's own credential (gateway/node/credentials.py: its record from
        the node's copy, or one store read)."""
        # Spec: 401 decided on the HTTP request, before the body is read.
        key = key_in(headers.authorization, AGENT_SCHEMES)
        match = self._credentials.identify(key)
        if match is not None:
            return match, None
        own = None
        if key is not None and agent_credentials.looks_like(key):
            own = await self._node.credentials.identify(key)
        if own is None:
            self._on_auth_failure("missing" if key is None else "invalid")
        return None, own

    def _unavailable(self, reason: str) -> Reply:
        """503 (429 for a rate limit) with Retry-After: the spec's throttling answer on plain HTTP."""
        self._node.metrics.shed.labels(reason=reason).inc()
        retry = {"Retry-After": str(limits.retry_after())}
        if reason in limits.RATE_LIMITED:
            return text_reply(429, f"too many requests: {reason}", retry)
        return text_reply(503, f"service unavailable: {reason}", retry)

    async def _handle(
        self,
        headers: RequestHeaders,
        source: BodyReader | bytes,
        key_id: str | None,
        own: OwnCredential | None,
    ) -> Reply:
        node = self._node
        settings = node.settings
        limit = settings.max_message_bytes
        if media_type(headers.content_type) != PROTOBUF:
            return text_reply(415, f"Content-Type must be {PROTOBUF}")
        encoding = headers.content_encoding.strip().lower()
        if encoding not in _ENCODINGS:
            return text_reply(415, f"unsupported Content-Encoding {encoding!r}; use gzip or none")
        try:
            if isinstance(source, bytes):
                if len(source) > limit:
                    raise BodyTooLarge(f"body exceeds {limit} bytes")
                body = source
            else:
                body = await source(limit)
            if encoding != "identity":
                body = gunzip(body, limit)
        except TimeoutError:
            node.metrics.client_timeouts.labels(kind="read").inc()
            return text_reply(408, f"request body not received within {settings.read_timeout:g}s")
        except BodyTooLarge as exc:
            return text_reply(413, str(exc))
        except (BadEncoding, ClientGone) as exc:
            return text_reply(400, str(exc))
        try:
            msg = pb.AgentToServer.FromString(body)
        except DecodeError as exc:
            return text_reply(400, f"body is not a valid AgentToServer: {exc}")

        # The slot in flight is taken only now: a client that trickles its body holds none
        # (issue 20: 9).
        if not node.limits.begin_message():
            return self._unavailable("max_inflight")
        try:
            return await self._process(msg, headers, key_id, own)
        finally:
            node.limits.end_message()

    async def _process(
        self, msg: pb.AgentToServer, headers: RequestHeaders, key_id: str | None, own: OwnCredential | None
    ) -> Reply:
        node = self._node
        try:
            state = await pipeline.load_state(node, msg)
            # A message from another key is refused by the engine, never taken for a clone; nor is one
            # with an agent's own credential (it proves which agent it is).
            clone = (
                own is None
                and (state is None or engine.may_speak_for(state, key_id))
                and duplicates.http_clone(state, msg)
            )
            if clone:
                # The first agent keeps its record; this one is enrolled under a uid of its own.
                msg, state = duplicates.as_clone(msg), None
            outcome = await pipeline.process(
                node,
                state,
                msg,
                "http",
                _saw,
                admit=node.liveness.admit_http,
                duplicate_of=msg.instance_uid if clone else None,
                key_id=key_id,
                own=own,
            )
            if clone and outcome.state is not None:
                node.metrics.duplicates.labels(transport="http").inc()
                logger.info(
                    "duplicate instance_uid %s: its sequence_num went back with another description; "
                    "the newcomer now has %s",
                    uid_str(msg.instance_uid),
                    uid_str(outcome.state.instance_uid),
                )
        except pipeline.Shed as exc:
            return self._unavailable(exc.reason)
        return self._reply_for(outcome, headers)
