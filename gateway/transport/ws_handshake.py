"""The RFC 6455 opening handshake, server side (section 4.2). Pure: a request head in, bytes out.

uvicorn parses the HTTP request and, seeing `Upgrade: websocket`, hands the socket to the OpAMP
port's WebSocket protocol together with the request head it parsed (re-serialised, header names in
lower case). This checks what a server must before switching protocols and writes the 101, or the
refusal the client gets instead.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from http import HTTPStatus

# 4.2.2: the GUID every accept key is derived with.
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# A request head this long is not a WebSocket handshake anyone sends (uvicorn's own HTTP limits
# apply before this; a head arriving in pieces is bounded here too).
MAX_HEAD_BYTES = 64 * 1024


@dataclass(frozen=True, slots=True)
class Request:
    method: str
    path: str
    # Header names in lower case, values as sent, in order.
    headers: list[tuple[bytes, bytes]]

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


class Refusal(Exception):
    """The upgrade is answered with this HTTP status instead of 101."""

    def __init__(self, status: int, text: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(text)
        self.status = status
        self.text = text
        self.headers = headers or {}


def parse_request(head: bytes) -> Request:
    """The request line and headers of `head` (up to and including the blank line)."""
    try:
        text = head.decode("latin-1")
        line, *lines = text.split("\r\n")
        method, target, version = line.split(" ")
    except ValueError:
        raise Refusal(400, "malformed request line") from None
    if version != "HTTP/1.1":
        raise Refusal(400, "a WebSocket handshake needs HTTP/1.1")
    headers: list[tuple[bytes, bytes]] = []
    for raw in lines:
        if not raw:
            continue
        name, sep, value = raw.partition(":")
        if not sep or not name or name != name.strip():
            raise Refusal(400, "malformed header line")
        headers.append((name.lower().encode("latin-1"), value.strip().encode("latin-1")))
    path = target.split("?", 1)[0]
    return Request(method=method, path=path, headers=headers)


def _tokens(value: bytes | None) -> set[bytes]:
    return {token.strip().lower() for token in value.split(b",")} if value else set()


def accept_key(request: Request) -> bytes:
    """The Sec-WebSocket-Accept value for a valid upgrade request; Refusal if it is not one."""
    if request.method != "GET":
        raise Refusal(405, "a WebSocket upgrade must be a GET", {"Allow": "GET, POST"})
    if request.header(b"host") is None:
        raise Refusal(400, "missing Host header")
    if b"websocket" not in _tokens(request.header(b"upgrade")):
        raise Refusal(400, "missing Upgrade: websocket")
    if b"upgrade" not in _tokens(request.header(b"connection")):
        raise Refusal(400, "missing Connection: Upgrade")
    if request.header(b"sec-websocket-version") != b"13":
        raise Refusal(426, "only WebSocket version 13 is supported", {"Sec-WebSocket-Version": "13"})
    key = request.header(b"sec-websocket-key")
    try:
        valid = key is not None and len(base64.b64decode(key, validate=True)) == 16
    except binascii.Error:
        valid = False
    if not valid or key is None:
        raise Refusal(400, "Sec-WebSocket-Key must be 16 bytes in base64")
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())


def switching_protocols(accept: bytes) -> bytes:
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    )


def refusal_response(refusal: Refusal) -> bytes:
    """A complete HTTP response for a refused upgrade; the connection closes after it."""
    body = (refusal.text + "\n").encode()
    reason = HTTPStatus(refusal.status).phrase
    lines = [
        f"HTTP/1.1 {refusal.status} {reason}",
        "Content-Type: text/plain; charset=utf-8",
        f"Content-Length: {len(body)}",
        "Connection: close",
        *(f"{name}: {value}" for name, value in refusal.headers.items()),
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
