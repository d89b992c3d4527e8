"""The WebSocket opening handshake (RFC 6455 section 4) as the lean agent makes it: one HTTP/1.1
GET with the upgrade headers, and the server's answer checked: `101` with the right
`Sec-WebSocket-Accept`, or a refusal with its status and `Retry-After`."""

from __future__ import annotations

import base64
import hashlib
import os

# RFC 6455 4.2.2: the server proves it read the key by hashing it with this GUID.
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
END_OF_HEAD = b"\r\n\r\n"
# An upgrade answer's head is a few hundred bytes; more than this is not an HTTP server answering.
MAX_HEAD = 16 * 1024


class HandshakeError(Exception):
    """The server's answer to the upgrade is not a valid WebSocket handshake."""


class UpgradeRefused(HandshakeError):
    """The server answered the upgrade with an HTTP error status (401, 503...), maybe saying when
    to try again."""

    def __init__(self, status: int, reason: str, retry_after: float | None) -> None:
        hint = "" if retry_after is None else f", Retry-After {retry_after:g} s"
        super().__init__(f"upgrade refused: HTTP {status} {reason}{hint}")
        self.status = status
        self.retry_after = retry_after


def new_key() -> bytes:
    """A fresh Sec-WebSocket-Key: 16 random bytes, base64."""
    return base64.b64encode(os.urandom(16))


def accept_for(key: bytes) -> bytes:
    """The Sec-WebSocket-Accept a server must answer `key` with."""
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())


def upgrade_request(host: str, port: int, path: str, key: bytes, agent_key: str = "") -> bytes:
    lines = [
        f"GET {path} HTTP/1.1",
        f"Host: {host}:{port}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key.decode()}",
        "Sec-WebSocket-Version: 13",
    ]
    if agent_key:
        lines.append(f"Authorization: Bearer {agent_key}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def check_answer(head: bytes, key: bytes) -> None:
    """Raise unless `head` (status line and headers, without the blank line) accepts the upgrade
    made with `key`: UpgradeRefused for an HTTP error status, HandshakeError for anything else."""
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise HandshakeError(f"not an HTTP answer: {status_line[:80]!r}")
    status = int(parts[1])
    headers: dict[str, str] = {}
    for line in header_lines:
        name, sep, value = line.partition(":")
        if not sep:
            raise HandshakeError(f"malformed header line {line[:80]!r}")
        headers[name.strip().lower()] = value.strip()
    if status != 101:
        reason = parts[2] if len(parts) > 2 else ""
        raise UpgradeRefused(status, reason, _retry_after(headers.get("retry-after")))
    if headers.get("upgrade", "").lower() != "websocket":
        raise HandshakeError(f"101 without Upgrade: websocket ({headers.get('upgrade')!r})")
    if headers.get("sec-websocket-accept", "").encode() != accept_for(key):
        raise HandshakeError(f"wrong Sec-WebSocket-Accept {headers.get('sec-websocket-accept')!r}")
    if headers.get("sec-websocket-extensions"):
        # We offered none; a server that applies one anyway would send frames we cannot read.
        raise HandshakeError(f"extension not offered: {headers['sec-websocket-extensions']!r}")


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (the HTTP-date form is not used by OpAMP servers: no hint then)."""
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None
