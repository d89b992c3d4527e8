from __future__ import annotations

import pytest

from gateway import settings as s


def test_defaults_are_a_loopback_single_node() -> None:
    loaded = s.load([], {})
    assert (loaded.host, loaded.port, loaded.admin_host, loaded.admin_port) == (
        "127.0.0.1",
        4320,
        "127.0.0.1",
        4321,
    )
    assert loaded.sqlite_path == "./opamp-gateway.db" and loaded.offline_after == 300
    assert s.is_loopback(loaded.host) and s.is_loopback(loaded.admin_host)


def test_flag_beats_environment_beats_default() -> None:
    env = {"OPAMP_GATEWAY_ADMIN_PORT": "9000", "OPAMP_GATEWAY_PORT": "9001"}
    loaded = s.load(["--port", "9002"], env)
    assert loaded.port == 9002 and loaded.admin_port == 9000


def test_every_field_has_a_flag_and_an_env_var() -> None:
    import dataclasses

    for field in dataclasses.fields(s.Settings):
        assert s.env_name(field.name) == "OPAMP_GATEWAY_" + field.name.upper()


@pytest.mark.parametrize(
    ("argv", "env", "names"),
    [
        ([], {"OPAMP_GATEWAY_PORT": "abc"}, "OPAMP_GATEWAY_PORT"),
        (["--port", "70000"], {}, "--port"),
        (["--offline-after", "-1"], {}, "--offline-after"),
        (["--offline-after", "inf"], {}, "--offline-after"),
        (["--offline-after", "nan"], {}, "--offline-after"),
        (["--forget-after", "300"], {}, "--forget-after"),
        (["--forget-after", "-1"], {}, "--forget-after"),
        ([], {"OPAMP_GATEWAY_FORGET_AFTER": "30d"}, "OPAMP_GATEWAY_FORGET_AFTER"),
        ([], {"OPAMP_GATEWAY_FLUSH_INTERVAL": "nan"}, "OPAMP_GATEWAY_FLUSH_INTERVAL|--flush-interval"),
        (["--log-level", "loud"], {}, "--log-level"),
        (["--log-format", "xml"], {}, "--log-format"),
        ([], {"OPAMP_GATEWAY_INSECURE_ALLOW_ANONYMOUS": "perhaps"}, "OPAMP_GATEWAY_INSECURE_ALLOW_ANONYMOUS"),
        (["--flush-batch", "0"], {}, "--flush-batch"),
        (["--loop-batch-window", "-0.01"], {}, "--loop-batch-window: must be between 0 and 1"),
        (["--loop-batch-window", "1.5"], {}, "--loop-batch-window: must be between 0 and 1"),
        (["--agent-heartbeat-interval", "-1"], {}, "--agent-heartbeat-interval"),
        (["--agent-heartbeat-interval", "1.5"], {}, "--agent-heartbeat-interval"),
        (["--agent-heartbeat-interval", str(2**32)], {}, "--agent-heartbeat-interval"),
        ([], {"OPAMP_GATEWAY_AGENT_HEARTBEAT_INTERVAL": "often"}, "OPAMP_GATEWAY_AGENT_HEARTBEAT_INTERVAL"),
    ],
)
def test_errors_name_the_bad_key(argv: list[str], env: dict[str, str], names: str) -> None:
    with pytest.raises(s.SettingsError, match=names):
        s.load(argv, env)


def test_forget_after() -> None:
    assert s.load([]).forget_after == 0
    assert s.load(["--forget-after", "2592000"]).forget_after == 2592000
    assert s.load(["--offline-after", "100", "--forget-after", "101"]).forget_after == 101
    assert (
        s.load(
            ["--offline-after", "10", "--agent-heartbeat-interval", "0", "--forget-after", "11"]
        ).forget_after
        == 11
    )
    # An agent polling every 30 s is online for 90 s: its record must outlive that.
    with pytest.raises(s.SettingsError, match="--forget-after"):
        s.load(["--offline-after", "10", "--forget-after", "11"])


def test_boolean_env() -> None:
    assert s.load([], {"OPAMP_GATEWAY_INSECURE_ALLOW_ANONYMOUS": "true"}).insecure_allow_anonymous
    assert not s.load([], {"OPAMP_GATEWAY_INSECURE_ALLOW_ANONYMOUS": "0"}).insecure_allow_anonymous


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("::1", True),
        ("localhost", True),
        ("127.3.4.5", True),
        ("0.0.0.0", False),
        ("10.0.0.1", False),
        ("gateway.example", False),
    ],
)
def test_loopback_detection(host: str, loopback: bool) -> None:
    assert s.is_loopback(host) is loopback


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["--elasticsearch-url", "es:9200"], "--elasticsearch-url"),
        (
            [
                "--elasticsearch-api-key",
                "k",
                "--elasticsearch-username",
                "u",
                "--elasticsearch-password",
                "p",
            ],
            "--elasticsearch-api-key",
        ),
        (["--elasticsearch-username", "u"], "--elasticsearch-username"),
        (["--elasticsearch-agents-alias", "Agents"], "--elasticsearch-agents-alias"),
        (["--elasticsearch-configs-alias", "_configs"], "--elasticsearch-configs-alias"),
        (["--elasticsearch-configs-alias", "opamp-agents"], "--elasticsearch-configs-alias"),
        (["--elasticsearch-refresh-interval", "5 seconds"], "--elasticsearch-refresh-interval"),
        (["--elasticsearch-timeout", "0"], "--elasticsearch-timeout"),
        (["--store-breaker-failures", "0"], "--store-breaker-failures"),
        (["--store-breaker-reset", "0"], "--store-breaker-reset"),
    ],
)
def test_elasticsearch_settings_are_checked(argv: list[str], names: str) -> None:
    with pytest.raises(s.SettingsError, match=names):
        s.load(argv, {})


def test_elasticsearch_settings_from_the_environment() -> None:
    env = {
        "OPAMP_GATEWAY_ELASTICSEARCH_URL": "https://es.example:9200",
        "OPAMP_GATEWAY_ELASTICSEARCH_API_KEY": "c2VjcmV0",
        "OPAMP_GATEWAY_ELASTICSEARCH_REFRESH_INTERVAL": "-1",
    }
    loaded = s.load([], env)
    assert loaded.elasticsearch_url == "https://es.example:9200"
    assert (loaded.elasticsearch_agents_alias, loaded.elasticsearch_configs_alias) == (
        "opamp-agents",
        "opamp-configs",
    )
    assert loaded.elasticsearch_refresh_interval == "-1"
    # Secrets stay out of logs that print the settings.
    assert "c2VjcmV0" not in repr(loaded)


@pytest.mark.parametrize(
    ("argv", "window", "idle"),
    [
        # The defaults: 3 x 30 s is within both, which keep their values.
        ([], 300.0, 600.0),
        (["--agent-heartbeat-interval", "200"], 600.0, 600.0),
        (["--agent-heartbeat-interval", "300"], 900.0, 900.0),
        (["--agent-heartbeat-interval", "0"], 300.0, 600.0),
        (["--agent-heartbeat-interval", "300", "--idle-timeout", "0"], 900.0, 0.0),
    ],
)
def test_liveness_window_and_idle_timeout_follow_the_heartbeat(
    argv: list[str], window: float, idle: float
) -> None:
    """Offline after 3 missed heartbeats, never sooner than --offline-after; a WebSocket is idle only
    after 3 heartbeat intervals, never sooner than --idle-timeout (0 stays "never")."""
    loaded = s.load(argv, {})
    assert loaded.agent_heartbeat_interval == (30 if not argv else int(argv[1]))
    assert loaded.offline_window == window
    assert loaded.ws_idle_timeout == idle


PER_AGENT = ["--agent-keys", "k1", "--agent-credentials", "per-agent"]


@pytest.mark.parametrize(
    ("argv", "names"),
    [
        (["--agent-credentials", "own"], "--agent-credentials: must be one of shared, per-agent"),
        (PER_AGENT, "--public-opamp-url: required with --agent-credentials per-agent"),
        (
            ["--agent-credentials", "per-agent", "--public-opamp-url", "wss://o.example.com/v1/opamp"],
            "needs agent keys",
        ),
        (
            [*PER_AGENT, "--public-opamp-url", "wss://o/v1/opamp", "--agent-heartbeat-interval", "0"],
            "--agent-heartbeat-interval",
        ),
        (["--public-opamp-url", "ftp://o.example.com"], "--public-opamp-url: must start with ws://"),
        (["--public-opamp-url", "o.example.com/v1/opamp"], "--public-opamp-url: must start with"),
        (["--public-opamp-url", "wss:///v1/opamp"], "--public-opamp-url: must name a host"),
        (["--public-opamp-url", "wss://o.example.com:99999/v1/opamp"], "--public-opamp-url: not a URL"),
        (
            ["--public-opamp-url", "wss://o.example.com/v1 opamp"],
            "--public-opamp-url: must not contain spaces",
        ),
        (
            ["--public-opamp-url", "wss://user:pw@o.example.com/v1/opamp"],
            "--public-opamp-url: must not carry",
        ),
        (["--public-opamp-url", "wss://o.example.com/v1/opamp#x"], "--public-opamp-url: must not carry"),
    ],
)
def test_agent_credential_settings_are_checked(argv: list[str], names: str) -> None:
    with pytest.raises(s.SettingsError, match=names):
        s.load(argv, environ={})


@pytest.mark.parametrize(
    "url",
    [
        "wss://opamp.example.com/v1/opamp",
        "ws://10.0.0.1:4320/v1/opamp",
        "https://o.example.com/v1/opamp",
        "http://[::1]:4320/v1/opamp",
    ],
)
def test_per_agent_credentials_offer_the_public_url(url: str) -> None:
    settings = s.load([*PER_AGENT, "--public-opamp-url", url], environ={})
    assert settings.credential_endpoint == url
    assert s.load(["--public-opamp-url", url], environ={}).credential_endpoint == ""
    from_env = s.load(
        [],
        environ={
            "OPAMP_GATEWAY_AGENT_KEYS": "k1",
            "OPAMP_GATEWAY_AGENT_CREDENTIALS": "per-agent",
            "OPAMP_GATEWAY_PUBLIC_OPAMP_URL": url,
        },
    )
    assert (from_env.agent_credentials, from_env.credential_endpoint) == ("per-agent", url)
    assert s.Settings().agent_credentials == "shared"
