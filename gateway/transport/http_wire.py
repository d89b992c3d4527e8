"""Bytes in and out of one plain-HTTP OpAMP request, on the bare ASGI interface.

POST /v1/opamp is the hot path of every HTTP agent: Starlette's Request, Response, router and
middleware stack cost more per heartbeat than the engine (docs/performance.md), so the transport
reads the few headers it needs, the body and sends its reply itself.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from starlette.types import Receive, Send

# The request headers the transport reads; every other header is skipped without decoding.
_WANTED = frozenset(
    {b"content-type", b"content-encoding", b"content-length", b"accept-encoding", b"authorization"}
)
# Replies shorter than this go out plain even to clients that accept gzip: gzip's own header and
# trailer (18 bytes) make a heartbeat reply (about 20 bytes) twice as long, for ~8 us of CPU.
GZIP_MIN_BYTES = 512
_TEXT = b"text/plain; charset=utf-8"


class BodyTooLarge(Exception):
    """The request body exceeds the message size limit (after decompression)."""


class BadEncoding(Exception):
    """The request body could not be decompressed."""


class ClientGone(Exception):
    """The client disconnected before its request body was complete."""


class RequestHeaders(NamedTuple):
    """The headers of a request the transport looks at, decoded as latin-1 (as HTTP headers are)."""

    content_type: str = ""
    content_encoding: str = "identity"
    content_length: str | None = None
    accept_encoding: str = ""
    authorization: str | None = None


_NO_HEADERS = RequestHeaders()


def request_headers(raw: Iterable[tuple[bytes, bytes]]) -> RequestHeaders:
    """The headers the transport reads from an ASGI scope's `headers` (names are lower case there);
    the first of repeated headers wins, as in Starlette's `Headers.get`."""
    found: dict[bytes, bytes] = {}
    for name, value in raw:
        if name in _WANTED and name not in found:
            found[name] = value
    if not found:
        return _NO_HEADERS
    length = found.get(b"content-length")
    auth = found.get(b"authorization")
    return RequestHeaders(
        found.get(b"content-type", b"").decode("latin-1"),
        found.get(b"content-encoding", b"identity").decode("latin-1"),
        None if length is None else length.decode("latin-1"),
        found.get(b"accept-encoding", b"").decode("latin-1"),
        None if auth is None else auth.decode("latin-1"),
    )


def media_type(value: str) -> str:
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


async def read_body(receive: Receive, declared: str | None, limit: int) -> bytes:
    """The request body, refused with BodyTooLarge as soon as it passes `limit` bytes (never buffered
    whole first); ClientGone if the client leaves before the end."""
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(f"body of {declared} bytes exceeds {limit} bytes")
    message = await receive()
    if message["type"] == "http.request" and not message.get("more_body", False):
        # The usual case: the whole body came in one piece.
        body: bytes = message.get("body", b"")
        if len(body) > limit:
            raise BodyTooLarge(f"body exceeds {limit} bytes")
        return body
    chunks: list[bytes] = []
    size = 0
    while True:
        if message["type"] != "http.request":
            raise ClientGone("client disconnected before the body was complete")
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"body exceeds {limit} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
        message = await receive()


class Reply(NamedTuple):
    """A complete answer: its status, body and headers (Content-Length is added on the way out)."""

    status: int
    body: bytes
    headers: list[tuple[bytes, bytes]]


def text_reply(status: int, message: str, extra: Mapping[str, str] | None = None) -> Reply:
    """A plain-text answer (errors and refusals), as Starlette's PlainTextResponse would send it."""
    headers = [(b"content-type", _TEXT)]
    if extra:
        headers.extend((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in extra.items())
    return Reply(status, (message + "\n").encode(), headers)


# The headers of every plain protobuf answer: shared, never changed (response_bytes knows it).
_PROTOBUF_HEADERS = [(b"content-type", b"application/x-protobuf")]
_GZIPPED_HEADERS = [*_PROTOBUF_HEADERS, (b"content-encoding", b"gzip")]


def protobuf_reply(body: bytes, accept_encoding: str) -> Reply:
    """A protobuf answer: gzipped when the client accepts it and it is worth it."""
    if len(body) >= GZIP_MIN_BYTES and accept_encoding and accepts_gzip(accept_encoding):
        return Reply(200, gzip.compress(body, compresslevel=5, mtime=0), _GZIPPED_HEADERS)
    return Reply(200, body, _PROTOBUF_HEADERS)


async def send_reply(send: Send, reply: Reply) -> None:
    """`reply` over ASGI: its headers plus Content-Length, then the body."""
    headers = [*reply.headers, (b"content-length", b"%d" % len(reply.body))]
    await send({"type": "http.response.start", "status": reply.status, "headers": headers})
    await send({"type": "http.response.body", "body": reply.body})


class _Head:
    """The bytes up to Content-Length of a kept-alive 200 protobuf answer, made again only when the
    server's default headers change (uvicorn replaces its Date header's list once a second)."""

    defaults: object = None
    head = b""


def response_bytes(
    reply: Reply, status_line: bytes, default_headers: Iterable[tuple[bytes, bytes]], keep_alive: bool
) -> bytes:
    """`reply` as one HTTP/1.1 response, written to the socket in one piece; `status_line` ends in
    CRLF, `default_headers` are the server's own (Date), as uvicorn sends them."""
    if keep_alive and reply.headers is _PROTOBUF_HEADERS and reply.status == 200:
        # Nearly every answer: a heartbeat's.
        if _Head.defaults is not default_headers:
            _Head.head = _head(status_line, default_headers, _PROTOBUF_HEADERS)
            _Head.defaults = default_headers
        return b"%scontent-length: %d\r\n\r\n%s" % (_Head.head, len(reply.body), reply.body)
    return b"".join(
        (
            _head(status_line, default_headers, reply.headers),
            b"content-length: %d\r\n" % len(reply.body),
            b"" if keep_alive else b"connection: close\r\n",
            b"\r\n",
            reply.body,
        )
    )


def _head(
    status_line: bytes, default_headers: Iterable[tuple[bytes, bytes]], headers: Iterable[tuple[bytes, bytes]]
) -> bytes:
    parts = [status_line]
    for name, value in default_headers:
        parts += (name, b": ", value, b"\r\n")
    for name, value in headers:
        parts += (name, b": ", value, b"\r\n")
    return b"".join(parts)
