"""Coverage-guided fuzz targets (atheris) for the gateway's parsers of untrusted bytes.

Run one directly for as long as you like, e.g.
    .venv/bin/python tests/fuzz/targets.py websocket -max_total_time=600
tests/fuzz/test_atheris.py runs each for a bounded number of inputs. A target fails (and atheris
prints the input) on any exception other than the documented refusals.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import atheris

with atheris.instrument_imports():
    from google.protobuf.message import DecodeError

    from gateway.opamp import engine, framing
    from gateway.opamp.engine import FleetView
    from gateway.proto import opamp_pb2 as pb
    from gateway.transport.http import BadEncoding, BodyTooLarge, accepts_gzip, gunzip

LIMIT = 4096
_FLEET = FleetView()


def _mint() -> bytes:
    return bytes(range(16))


def websocket(data: bytes) -> None:
    """One WebSocket message: framing, protobuf, then the engine (as a stranger and as a known agent)."""
    try:
        payload = framing.decode(data, LIMIT)
        msg = pb.AgentToServer.FromString(payload)
    except (framing.FramingError, DecodeError):
        return
    first = engine.handle(None, msg, _FLEET, 1000.0, _mint)
    if first.state is not None:
        engine.handle(first.state, msg, _FLEET, 1001.0, _mint)


def http_body(data: bytes) -> None:
    """A gzip request body and an Accept-Encoding header, as the HTTP transport decodes them."""
    try:
        body = gunzip(data, LIMIT)
    except (BadEncoding, BodyTooLarge):
        body = b""
    assert len(body) <= LIMIT
    accepts_gzip(data.decode("latin-1"))


TARGETS: dict[str, Callable[[bytes], None]] = {"websocket": websocket, "http_body": http_body}


def main() -> None:
    target = TARGETS[sys.argv[1]]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
