"""Plain-HTTP OpAMP transport: POST /v1/opamp with a protobuf body, one ServerToAgent back."""

from __future__ import annotations

import asyncio
import gzip
import logging
import time
import zlib

from google.protobuf.message import DecodeError
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response

from gateway import limits
from gateway.opamp import engine
from gateway.proto import opamp_pb2 as pb
from gateway.transport import pipeline
from gateway.transport.context import OpampNode, node_of

logger = logging.getLogger("gateway.transport.http")

PROTOBUF = "application/x-protobuf"


class BodyTooLarge(Exception):
    """The request body exceeds the message size limit (after decompression)."""


class BadEncoding(Exception):
    """The request body could not be decompressed."""


def _media_type(value: str) -> str:
    return value.split(";", 1)[0].strip().lower()


def accepts_gzip(header: str) -> bool:
    """True if Accept-Encoding admits gzip (an explicit q=0 refuses it; `*` admits it)."""
    star: bool | None = None
    for part in header.split(","):
        token, _, params = part.strip().partition(";")
        name = token.strip().lower()
        if name not in ("gzip", "x-gzip", "*"):
            continue
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        if name == "*":
            star = q > 0
        else:
            return q > 0
    return bool(star)


def gunzip(data: bytes, limit: int) -> bytes:
    """Decompress a gzip body, never producing more than `limit` bytes (no zip bombs)."""
    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, limit + 1)
    except zlib.error as exc:
        raise BadEncoding(f"invalid gzip body: {exc}") from None
    if len(out) > limit or inflater.unconsumed_tail:
        raise BodyTooLarge(f"decompressed body exceeds {limit} bytes")
    if not inflater.eof:
        raise BadEncoding("truncated gzip body")
    return out


async def _read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"body of {declared} bytes exceeds {limit} bytes")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"body exceeds {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _text(status: int, message: str, headers: dict[str, str] | None = None) -> Response:
    return PlainTextResponse(message + "\n", status_code=status, headers=headers)


def _unavailable(node: OpampNode, reason: str) -> Response:
    """503 (429 for a rate limit) with Retry-After: the spec's throttling answer on plain HTTP."""
    node.metrics.shed.labels(reason=reason).inc()
    if reason in limits.RATE_LIMITED:
        return _text(429, f"too many requests: {reason}", {"Retry-After": str(limits.retry_after())})
    return _text(503, f"service unavailable: {reason}", {"Retry-After": str(limits.retry_after())})


def _protobuf(reply: pb.ServerToAgent, request: Request, limit: int) -> Response:
    body = reply.SerializeToString()
    if len(body) > limit:
        # Spec: never send a message over the limit; say why instead of silently dropping it.
        logger.error("dropped a %d-byte reply over the %d-byte limit", len(body), limit)
        body = engine.reply_too_large(reply.instance_uid)
    headers = {"Content-Type": PROTOBUF}
    if accepts_gzip(request.headers.get("accept-encoding", "")):
        body = gzip.compress(body, compresslevel=5, mtime=0)
        headers["Content-Encoding"] = "gzip"
    return Response(body, status_code=200, headers=headers)


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


async def opamp_http(request: Request) -> Response:
    node = node_of(request)
    started = time.perf_counter()
    if not node.limits.begin_message():
        result = _unavailable(node, "max_inflight")
    else:
        try:
            result = await _handle(request, node)
        finally:
            node.limits.end_message()
    node.metrics.handled("http", str(result.status_code), time.perf_counter() - started)
    return result


async def _handle(request: Request, node: OpampNode) -> Response:
    settings = node.settings
    limit = settings.max_message_bytes
    if _media_type(request.headers.get("content-type", "")) != PROTOBUF:
        return _text(415, f"Content-Type must be {PROTOBUF}")
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip", "x-gzip"):
        return _text(415, f"unsupported Content-Encoding {encoding!r}; use gzip or none")
    try:
        # A client that trickles its body (slowloris) must not hold a slot in flight for ever.
        body = await asyncio.wait_for(_read_body(request, limit), settings.read_timeout)
        if encoding != "identity":
            body = gunzip(body, limit)
    except TimeoutError:
        node.metrics.client_timeouts.labels(kind="read").inc()
        return _text(408, f"request body not received within {settings.read_timeout:g}s")
    except BodyTooLarge as exc:
        return _text(413, str(exc))
    except BadEncoding as exc:
        return _text(400, str(exc))
    except ClientDisconnect:
        return _text(400, "client disconnected before the body was complete")
    try:
        msg = pb.AgentToServer.FromString(body)
    except DecodeError as exc:
        return _text(400, f"body is not a valid AgentToServer: {exc}")

    try:
        state = await pipeline.load_state(node, msg)
        outcome = await pipeline.process(node, state, msg, "http", _saw)
    except pipeline.Shed as exc:
        return _unavailable(node, exc.reason)
    return _protobuf(outcome.reply, request, limit)
