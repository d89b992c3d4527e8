"""Settings of the WebSocket transport, the bus and the drain."""

from __future__ import annotations

import pytest

from gateway import settings as s


def test_defaults() -> None:
    loaded = s.load([], {})
    assert loaded.redis_url == ""
    assert (loaded.ws_ping_interval, loaded.ws_ping_timeout, loaded.loop_batch_window) == (45.0, 20.0, 0.1)
    assert (loaded.drain_seconds, loaded.drain_retry_window, loaded.owner_ttl) == (30.0, 10.0, 180.0)


def test_from_flags_and_environment() -> None:
    loaded = s.load(
        ["--drain-seconds", "0", "--ws-ping-interval", "5"],
        {"OPAMP_GATEWAY_REDIS_URL": "redis://redis:6379/0", "OPAMP_GATEWAY_OWNER_TTL": "30"},
    )
    assert loaded.redis_url == "redis://redis:6379/0" and loaded.owner_ttl == 30
    assert loaded.drain_seconds == 0 and loaded.ws_ping_interval == 5


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["--redis-url", "localhost:6379"], "--redis-url"),
        (["--owner-ttl", "1"], "--owner-ttl"),
        (["--drain-seconds", "-1"], "--drain-seconds"),
        (["--drain-retry-window", "0.5"], "--drain-retry-window"),
        (["--ws-ping-interval", "0"], "--ws-ping-interval"),
        (["--ws-ping-timeout", "-2"], "--ws-ping-timeout"),
    ],
)
def test_bad_values_name_the_flag(argv: list[str], names: str) -> None:
    with pytest.raises(s.SettingsError, match=names):
        s.load(argv, {})
