"""The opening handshake (gateway/transport/ws_handshake.py)."""

from __future__ import annotations

import pytest

from gateway.transport.ws_handshake import (
    Refusal,
    accept_key,
    parse_request,
    refusal_response,
    switching_protocols,
)

GOOD = (
    b"GET /v1/opamp?x=1 HTTP/1.1\r\nhost: gw\r\nupgrade: websocket\r\nconnection: keep-alive, Upgrade\r\n"
    b"sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n"
)


def test_the_rfc_example_key() -> None:
    request = parse_request(GOOD)
    assert (request.method, request.path) == ("GET", "/v1/opamp")
    # RFC 6455 section 1.3.
    assert accept_key(request) == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert switching_protocols(b"k").startswith(b"HTTP/1.1 101 Switching Protocols\r\n")


@pytest.mark.parametrize(
    ("head", "status"),
    [
        (GOOD.replace(b"GET", b"PUT"), 405),
        (GOOD.replace(b"host: gw\r\n", b""), 400),
        (GOOD.replace(b"upgrade: websocket", b"upgrade: h2c"), 400),
        (GOOD.replace(b"keep-alive, Upgrade", b"keep-alive"), 400),
        (GOOD.replace(b"version: 13", b"version: 8"), 426),
        (GOOD.replace(b"dGhlIHNhbXBsZSBub25jZQ==", b"c2hvcnQ="), 400),
        (GOOD.replace(b"dGhlIHNhbXBsZSBub25jZQ==", b"!!not base64!!"), 400),
    ],
)
def test_what_is_not_an_upgrade_is_refused(head: bytes, status: int) -> None:
    with pytest.raises(Refusal) as caught:
        accept_key(parse_request(head))
    assert caught.value.status == status


@pytest.mark.parametrize(
    "head",
    [
        b"GET /\r\n\r\n",
        b"GET / HTTP/1.0\r\nhost: x\r\n\r\n",
        b"GET / HTTP/1.1\r\nno colon\r\n\r\n",
        b"\xff\xfe",
    ],
)
def test_malformed_heads_are_400(head: bytes) -> None:
    with pytest.raises(Refusal) as caught:
        parse_request(head)
    assert caught.value.status == 400


def test_a_refusal_is_a_complete_response() -> None:
    data = refusal_response(Refusal(503, "draining", {"Retry-After": "7"}))
    head, body = data.split(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503 Service Unavailable\r\n")
    assert b"Retry-After: 7" in head and b"Connection: close" in head
    assert body == b"draining\n" and b"Content-Length: 9" in head
