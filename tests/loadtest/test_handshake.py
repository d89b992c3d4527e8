"""The lean agent's upgrade: the request it sends and how it reads the answer."""

from __future__ import annotations

import pytest

from loadtest.handshake import (
    HandshakeError,
    UpgradeRefused,
    accept_for,
    check_answer,
    new_key,
    upgrade_request,
)

KEY = b"dGhlIHNhbXBsZSBub25jZQ=="


def _head(status: str, *headers: str) -> bytes:
    return "\r\n".join([f"HTTP/1.1 {status}", *headers]).encode()


def test_the_accept_key_is_rfc_6455s_example() -> None:
    assert accept_for(KEY) == b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
    assert len({new_key() for _ in range(50)}) == 50


def test_the_request_carries_the_upgrade_headers_and_the_agent_key_only_when_set() -> None:
    plain = upgrade_request("127.0.0.1", 4320, "/v1/opamp", KEY)
    assert plain.startswith(b"GET /v1/opamp HTTP/1.1\r\nHost: 127.0.0.1:4320\r\n")
    assert b"Upgrade: websocket\r\n" in plain and b"Sec-WebSocket-Version: 13\r\n" in plain
    assert b"Sec-WebSocket-Key: " + KEY + b"\r\n" in plain and plain.endswith(b"\r\n\r\n")
    assert b"Authorization" not in plain
    keyed = upgrade_request("127.0.0.1", 4320, "/v1/opamp", KEY, agent_key="s3cret")
    assert b"\r\nAuthorization: Bearer s3cret\r\n" in keyed


def test_a_101_with_the_right_accept_key_passes() -> None:
    check_answer(
        _head("101 Switching Protocols", "upgrade: WebSocket", "Connection: Upgrade", "Sec-WebSocket-Accept: "
              "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        KEY,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("head", "match"),
    [
        (_head("101 Switching Protocols", "Upgrade: websocket", "Sec-WebSocket-Accept: AAAA"), "Accept"),
        (_head("101 Switching Protocols", "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "Upgrade"),
        (
            _head(
                "101 Switching Protocols",
                "Upgrade: websocket",
                "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=",
                "Sec-WebSocket-Extensions: permessage-deflate",
            ),
            "extension",
        ),
        (b"SSH-2.0-OpenSSH_9.6", "not an HTTP answer"),
        (_head("101 Switching Protocols", "no colon here"), "malformed"),
    ],
)
def test_a_wrong_101_is_a_handshake_error(head: bytes, match: str) -> None:
    with pytest.raises(HandshakeError, match=match) as caught:
        check_answer(head, KEY)
    assert not isinstance(caught.value, UpgradeRefused)


def test_401_and_503_are_refusals_with_their_retry_hint() -> None:
    with pytest.raises(UpgradeRefused) as unauthorized:
        check_answer(_head("401 Unauthorized", "Content-Length: 0"), KEY)
    assert (unauthorized.value.status, unauthorized.value.retry_after) == (401, None)
    with pytest.raises(UpgradeRefused) as unavailable:
        check_answer(_head("503 Service Unavailable", "Retry-After: 7"), KEY)
    assert (unavailable.value.status, unavailable.value.retry_after) == (503, 7.0)
    assert "Retry-After 7 s" in str(unavailable.value)
    with pytest.raises(UpgradeRefused) as dated:
        check_answer(_head("503 Service Unavailable", "Retry-After: Fri, 04 Dec 2026 18:00:00 GMT"), KEY)
    assert dated.value.retry_after is None
