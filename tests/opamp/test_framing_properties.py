"""Properties of the WebSocket framing over arbitrary bytes (hypothesis)."""

from __future__ import annotations

from hypothesis import given, strategies as st

from gateway.opamp import framing


@given(st.binary(max_size=64), st.integers(min_value=0, max_value=64) | st.none())
def test_decode_returns_a_suffix_or_refuses_an_oversized_message(data: bytes, limit: int | None) -> None:
    try:
        payload = framing.decode(data, limit)
    except framing.MessageTooLarge:
        assert limit is not None and len(data) > limit
        return
    assert data.endswith(payload)
    header = data[: len(data) - len(payload)]
    # What was cut off is a varint 0, and only when there was one.
    assert framing.zero_header_length(header) == len(header)
    assert framing.zero_header_length(payload) == 0 or not header


@given(st.binary(max_size=256))
def test_encode_then_decode_is_the_identity(payload: bytes) -> None:
    assert framing.decode(framing.encode(payload)) == payload
    assert framing.decode(framing.encode(payload), len(payload) + 1) == payload


@given(st.binary(max_size=256), st.integers(min_value=0, max_value=255))
def test_over_the_limit_is_always_refused(payload: bytes, limit: int) -> None:
    framed = framing.encode(payload)
    if len(framed) > limit:
        try:
            framing.decode(framed, limit)
        except framing.MessageTooLarge as exc:
            assert (exc.size, exc.limit) == (len(framed), limit)
        else:
            raise AssertionError("accepted a message over the limit")
