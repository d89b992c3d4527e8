"""Properties of the WebSocket framing over arbitrary bytes (hypothesis)."""

from __future__ import annotations

from hypothesis import given, strategies as st

from gateway.opamp import framing


@given(st.binary(max_size=64), st.integers(min_value=0, max_value=64) | st.none())
def test_decode_returns_a_suffix_or_raises_a_framing_error(data: bytes, limit: int | None) -> None:
    try:
        payload = framing.decode(data, limit)
    except framing.FramingError:
        return
    assert data.endswith(payload)
    assert limit is None or len(payload) <= limit
    header = data[: len(data) - len(payload)]
    assert framing.decode_varint(header) == (0, len(header))


@given(st.binary(max_size=256))
def test_encode_then_decode_is_the_identity(payload: bytes) -> None:
    assert framing.decode(framing.encode(payload)) == payload
    assert framing.decode(framing.encode(payload), len(payload)) == payload


@given(st.binary(min_size=1, max_size=256), st.integers(min_value=0, max_value=255))
def test_over_the_limit_is_always_refused(payload: bytes, limit: int) -> None:
    framed = framing.encode(payload)
    if len(payload) > limit:
        try:
            framing.decode(framed, limit)
        except framing.MessageTooLarge as exc:
            assert (exc.size, exc.limit) == (len(payload), limit)
        else:
            raise AssertionError("accepted a payload over the limit")
