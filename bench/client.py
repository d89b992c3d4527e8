"""A minimal HTTP/1.1 keep-alive client for loopback, for the untimed parts of a run (enrollment,
resync, reply checks): no dependency, no proxy settings consulted, one request at a time per
connection."""

from __future__ import annotations

import asyncio
import http.client
import logging
from dataclasses import dataclass

logger = logging.getLogger("bench.client")

PROTOBUF = "application/x-protobuf"


class HttpError(Exception):
    """The server answered something that is not HTTP/1.1 as expected, or closed the connection."""


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes


class Connection:
    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def __aenter__(self) -> Connection:
        self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._writer is not None:
            self._writer.close()
            try:
                await self._writer.wait_closed()
            except OSError:
                pass

    async def post(self, path: str, body: bytes, content_type: str = PROTOBUF) -> Reply:
        if self._reader is None or self._writer is None:
            raise HttpError("connection not open")
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        self._writer.write(head.encode("ascii") + body)
        try:
            raw = await self._reader.readuntil(b"\r\n\r\n")
            status_line, *lines = raw.decode("latin-1").split("\r\n")
            headers = {}
            for line in lines:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            length = int(headers.get("content-length", "0"))
            payload = await self._reader.readexactly(length)
        except (asyncio.IncompleteReadError, ConnectionError) as exc:
            raise HttpError(f"connection to {self.host}:{self.port} lost: {exc}") from None
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[1].isdigit():
            raise HttpError(f"not an HTTP status line: {status_line!r}")
        return Reply(int(parts[1]), headers, payload)


def get(host: str, port: int, path: str, timeout: float = 2.0) -> Reply:
    """One blocking GET (readiness probes, metrics scrapes)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        conn.close()
