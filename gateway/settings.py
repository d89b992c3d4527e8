"""The gateway's settings: one frozen dataclass, built once from CLI flags and OPAMP_GATEWAY_* env."""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import math
import os
import re
import socket
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

ENV_PREFIX = "OPAMP_GATEWAY_"
LogFormat = Literal["text", "json"]
_LOG_LEVELS = ("critical", "error", "warning", "info", "debug")
_INDEX_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,199}$")
_HOST_NAME = re.compile(r"^[A-Za-z0-9._-]{1,253}$")
# Heartbeats an agent may miss before it shows offline (and its WebSocket counts as idle).
HEARTBEATS_MISSED = 3
# Beyond a uint32 of seconds (136 years) an interval means nothing.
_MAX_HEARTBEAT_INTERVAL = 2**32 - 1
_REFRESH_INTERVAL = re.compile(r"^(-1|[0-9]+(ms|s|m|h))$")
AGENT_CREDENTIALS = ("shared", "per-agent")
_URL_SCHEMES = ("ws", "wss", "http", "https")
_POSITIVE = (
    "offline_after",
    "flush_interval",
    "ws_ping_interval",
    "ws_ping_timeout",
    "auth_reload_interval",
    "read_timeout",
    "header_timeout",
    "send_timeout",
    "config_refresh_interval",
    "config_resend_after",
    "rollout_interval",
    "elasticsearch_timeout",
    "store_breaker_reset",
)
_AT_LEAST_ONE = (
    "max_message_bytes",
    "flush_batch",
    "writer_queue_size",
    "max_connections",
    "max_inflight",
    "enrollment_burst",
    "max_config_bytes",
    "max_description_bytes",
    "max_inflight_bytes",
    "max_unfinished",
    "max_unfinished_per_ip",
    "store_breaker_failures",
)


class SettingsError(ValueError):
    """A setting has a bad value; the message names the flag or environment variable."""


def _default_node_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True)
class Settings:
    host: str = field(default="127.0.0.1", metadata={"help": "address of the OpAMP port"})
    port: int = field(default=4320, metadata={"help": "OpAMP port (POST /v1/opamp)"})
    admin_host: str = field(default="127.0.0.1", metadata={"help": "address of the admin port"})
    admin_port: int = field(default=4321, metadata={"help": "admin port (/api/v1, /metrics)"})
    admin_allowed_hosts: str = field(
        default="",
        metadata={
            "help": "comma-separated host names the admin port also answers to (besides IP addresses, "
            "loopback names and --admin-host); others get 421 (DNS rebinding)"
        },
    )
    sqlite_path: str = field(default="./opamp-gateway.db", metadata={"help": "SQLite store file"})
    offline_after: float = field(
        default=300.0,
        metadata={
            "help": "seconds without a message before an agent is offline (or 3 x --agent-heartbeat-interval "
            "if longer)"
        },
    )
    agent_heartbeat_interval: int = field(
        default=30,
        metadata={
            "help": "heartbeat interval in seconds offered to agents with ReportsHeartbeat and "
            "AcceptsOpAMPConnectionSettings (0: offer none); an agent reporting heartbeats is offline "
            "after 3 of them are missed, never sooner than --offline-after"
        },
    )
    forget_after: float = field(
        default=0.0,
        metadata={
            "help": "seconds without a message after which an agent's record is deleted (e.g. 2592000 "
            "for 30 days); 0: never. Above --offline-after"
        },
    )
    node_id: str = field(default_factory=_default_node_id, metadata={"help": "this node's name"})
    log_level: str = field(default="info", metadata={"help": "|".join(_LOG_LEVELS)})
    log_format: LogFormat = field(default="text", metadata={"help": "text|json"})
    max_message_bytes: int = field(
        default=64 * 1024 * 1024,
        metadata={"help": "largest AgentToServer accepted, after decompression (HTTP 413 above)"},
    )
    flush_interval: float = field(
        default=0.5, metadata={"help": "seconds between store flushes of non-urgent writes"}
    )
    flush_batch: int = field(default=1000, metadata={"help": "most agent writes per store commit"})
    writer_queue_size: int = field(
        default=200_000, metadata={"help": "most agents with unflushed writes before shedding load"}
    )
    config_refresh_interval: float = field(
        default=30.0,
        metadata={"help": "seconds between re-reads of the configs (events make changes arrive sooner)"},
    )
    config_resend_after: float = field(
        default=60.0,
        metadata={"help": "seconds before a remote config the agent has not reported on is sent again"},
    )
    rollout_interval: float = field(
        default=5.0,
        metadata={"help": "seconds between the rollout controller's looks at staged rollouts (each node)"},
    )
    config_push_rate: float = field(
        default=1000.0,
        metadata={
            "help": "WebSocket agents per second this node pushes a changed config to (0: no limit); "
            "each push brings two reports back, so this bounds the burst a fleet-wide change causes"
        },
    )
    max_config_bytes: int = field(
        default=1024 * 1024,
        metadata={"help": "largest config (its files and selector) the admin API accepts"},
    )
    allow_insecure_package_urls: bool = field(
        default=False,
        metadata={
            "help": "accept http:// package download URLs in the admin API (default: https:// only; agents "
            "download packages from them and only the content hash protects the bytes)"
        },
    )
    max_inflight_bytes: int = field(
        default=256 * 1024 * 1024,
        metadata={
            "help": "most bytes of partly received WebSocket messages a node holds, all sockets "
            "together; the socket that goes over is closed with 1008"
        },
    )
    max_description_bytes: int = field(
        default=64 * 1024,
        metadata={
            "help": "largest agent_description kept (serialized); a larger one gets BadRequest and the "
            "agent keeps its old record"
        },
    )
    insecure_allow_anonymous: bool = field(
        default=False,
        metadata={
            "help": "serve the OpAMP port beyond loopback without agent keys, or the admin port without "
            "an admin token"
        },
    )
    agent_keys_file: str = field(
        default="",
        metadata={
            "help": "file of agent keys, one per line (plain, or sha256:<hex>); re-read when it changes. "
            "Agents send Authorization: Bearer <key> or ApiKey <key>"
        },
    )
    agent_keys: str = field(
        default="",
        metadata={"help": "agent keys, comma-separated (prefer the environment or a file: flags show in ps)"},
    )
    agent_credentials: str = field(
        default="shared",
        metadata={
            "help": "shared|per-agent. shared: agents keep using the agent keys. per-agent: an agent that "
            "enrolls with an agent key and accepts opamp connection settings is offered a credential of "
            "its own (connection_settings.opamp, with --public-opamp-url); once it connects with it, "
            "that credential is the only one accepted for its instance_uid (docs/security.md)"
        },
    )
    public_opamp_url: str = field(
        default="",
        metadata={
            "help": "the OpAMP endpoint agents should connect to, as they reach it (ws://, wss://, http:// "
            "or https://, e.g. wss://opamp.example.com/v1/opamp): offered with each per-agent "
            "credential; required with --agent-credentials per-agent"
        },
    )
    admin_token_file: str = field(
        default="",
        metadata={
            "help": "file of admin API tokens, one per line; /api/v1 needs Authorization: Bearer <token>"
        },
    )
    strict_key_file: bool = field(
        default=False,
        metadata={
            "help": "refuse every agent while the agent key file is unreadable, empty or malformed "
            "(default: keep the previous keys and log an error)"
        },
    )
    auth_reload_interval: float = field(
        default=5.0, metadata={"help": "seconds between checks of the key and token files for changes"}
    )
    tls_cert: str = field(default="", metadata={"help": "PEM certificate (chain): serve both ports over TLS"})
    tls_key: str = field(default="", metadata={"help": "PEM private key of --tls-cert"})
    tls_client_ca: str = field(
        default="",
        metadata={"help": "PEM CA bundle: agents must present a client certificate it signed (mutual TLS)"},
    )
    redis_url: str = field(
        default="",
        metadata={"help": "Redis for pushes across nodes, e.g. redis://redis:6379/0; empty: one node"},
    )
    ws_ping_interval: float = field(
        default=45.0,
        metadata={
            "help": "seconds a WebSocket may stay silent before the node pings it (keeps idle proxies and "
            "balancers open: keep it below the shortest idle timeout on the path); above the agents' "
            "heartbeat interval, a heartbeating agent is never pinged"
        },
    )
    ws_ping_timeout: float = field(
        default=20.0, metadata={"help": "seconds to wait for a pong before dropping a WebSocket"}
    )
    loop_batch_window: float = field(
        default=0.1,
        metadata={
            "help": "seconds a node holding 1,000 or more WebSocket agents lets network events gather "
            "before handling them in one turn (fewer wake-ups, less CPU per agent; a message waits at "
            "most this much longer); 0: handle each as it comes; at most 1"
        },
    )
    owner_ttl: float = field(
        default=180.0,
        metadata={
            "help": "seconds a node's claim on a WebSocket agent lives in Redis unrefreshed (refreshed every "
            "third of it; a claim counts only while its node is alive, see --node-ttl)"
        },
    )
    node_ttl: float = field(
        default=6.0,
        metadata={
            "help": "seconds a node's liveness key lives in Redis unrefreshed; past it, other nodes show "
            "its agents as not connected and keep commands for them pending"
        },
    )
    max_connection_age: float = field(
        default=0.0,
        metadata={
            "help": "seconds after which a WebSocket is closed gracefully (1001, told to come back after "
            "a random 1 to --drain-retry-window s) so agents spread over all nodes; 0: never"
        },
    )
    max_connection_age_jitter: float = field(
        default=0.2,
        metadata={"help": "each WebSocket's age limit is drawn from [age x (1 - this), age]; 0 to 1"},
    )
    drain_seconds: float = field(
        default=30.0, metadata={"help": "seconds over which a draining node closes its WebSockets"}
    )
    drain_retry_window: float = field(
        default=10.0,
        metadata={"help": "drained agents are told to reconnect after a random 1 to this many seconds"},
    )
    elasticsearch_url: str = field(
        default="",
        metadata={
            "help": "Elasticsearch URL, e.g. https://es:9200; when set, Elasticsearch is the store instead "
            "of SQLite (run `opamp-gateway migrate` first)"
        },
    )
    elasticsearch_api_key: str = field(
        default="", repr=False, metadata={"help": "Elasticsearch API key (the base64 'encoded' form)"}
    )
    elasticsearch_username: str = field(
        default="", metadata={"help": "Elasticsearch basic-auth user (instead of an API key)"}
    )
    elasticsearch_password: str = field(
        default="", repr=False, metadata={"help": "Elasticsearch basic-auth password"}
    )
    elasticsearch_ca_cert: str = field(
        default="", metadata={"help": "PEM file of the CA that signed Elasticsearch's certificate"}
    )
    elasticsearch_agents_alias: str = field(
        default="opamp-agents", metadata={"help": "write alias (and index prefix) of the agents index"}
    )
    elasticsearch_configs_alias: str = field(
        default="opamp-configs", metadata={"help": "write alias (and index prefix) of the configs index"}
    )
    elasticsearch_refresh_interval: str = field(
        default="5s",
        metadata={
            "help": "refresh_interval `migrate` gives the agents index: how stale inventory searches are"
        },
    )
    elasticsearch_timeout: float = field(
        default=10.0, metadata={"help": "seconds before an Elasticsearch request counts as failed"}
    )
    store_breaker_failures: int = field(
        default=5, metadata={"help": "consecutive store failures that open the circuit breaker"}
    )
    store_breaker_reset: float = field(
        default=10.0,
        metadata={"help": "seconds the open circuit sheds load before one request probes the store again"},
    )
    max_connections: int = field(
        default=10_000,
        metadata={"help": "most open WebSockets on this node; more upgrades get 503 with Retry-After"},
    )
    max_inflight: int = field(
        default=1000,
        metadata={
            "help": "most agent messages handled at once; more get 503 (HTTP) or Unavailable (WebSocket)"
        },
    )
    enrollment_rate: float = field(
        default=100.0,
        metadata={
            "help": "new agents enrolled per second (token bucket; 0: no limit); more get 429 or Unavailable"
        },
    )
    enrollment_burst: int = field(
        default=500, metadata={"help": "new agents enrolled at once before --enrollment-rate applies"}
    )
    idle_timeout: float = field(
        default=600.0,
        metadata={
            "help": "seconds a WebSocket may stay silent before it is closed (0: never); at least 3 x "
            "--agent-heartbeat-interval, and never a socket with an agent without ReportsHeartbeat"
        },
    )
    read_timeout: float = field(
        default=30.0, metadata={"help": "seconds to receive a whole HTTP request body (408 after)"}
    )
    header_timeout: float = field(
        default=10.0,
        metadata={
            "help": "seconds for an HTTP request line and headers (a WebSocket handshake included) to "
            "arrive, on both ports; the connection gets 408 and is closed after"
        },
    )
    max_unfinished_per_ip: int = field(
        default=256,
        metadata={
            "help": "most connections one client address (an IPv6 /64) may hold on a port whose request "
            "has not fully arrived; more are answered 429 and closed"
        },
    )
    max_unfinished: int = field(
        default=4096,
        metadata={
            "help": "most connections a port holds whose request has not fully arrived; past it the "
            "oldest is dropped, so slow clients never take the files agents and probes need"
        },
    )
    send_timeout: float = field(
        default=30.0,
        metadata={
            "help": "seconds a WebSocket send may wait for a client that does not read, before dropping it"
        },
    )

    def __post_init__(self) -> None:
        self._check_numbers()
        if bool(self.tls_cert) != bool(self.tls_key):
            raise SettingsError("--tls-cert and --tls-key: give both (or neither)")
        if self.tls_client_ca and not self.tls_cert:
            raise SettingsError("--tls-client-ca: needs --tls-cert and --tls-key (mutual TLS is TLS first)")
        if self.log_level not in _LOG_LEVELS:
            raise SettingsError(f"--log-level: must be one of {', '.join(_LOG_LEVELS)}")
        if self.log_format not in ("text", "json"):
            raise SettingsError("--log-format: must be text or json")
        if not self.node_id:
            raise SettingsError("--node-id: must not be empty")
        if self.redis_url and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise SettingsError("--redis-url: must start with redis://, rediss:// or unix://")
        self._check_elasticsearch()
        self._check_credentials()
        for entry in self.allowed_admin_hosts:
            if not _HOST_NAME.match(entry):
                raise SettingsError(f"--admin-allowed-hosts: {entry[:80]!r} is not a host name")

    def _check_numbers(self) -> None:
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            # NaN passes every comparison below, and inf would reach Elasticsearch queries as
            # -Infinity, which its JSON parser refuses.
            if isinstance(value, float) and not math.isfinite(value):
                raise SettingsError(f"{_flag(f.name)}: must be a finite number, got {value}")
        for name in ("port", "admin_port"):
            value = getattr(self, name)
            if not 0 <= value <= 65535:
                raise SettingsError(f"{_flag(name)}: must be a port number 0-65535, got {value}")
        for name in _POSITIVE:
            if getattr(self, name) <= 0:
                raise SettingsError(f"{_flag(name)}: must be greater than 0")
        for name in _AT_LEAST_ONE:
            if getattr(self, name) < 1:
                raise SettingsError(f"{_flag(name)}: must be at least 1")
        for name in (
            "agent_heartbeat_interval",
            "enrollment_rate",
            "idle_timeout",
            "drain_seconds",
            "config_push_rate",
            "max_connection_age",
        ):
            if getattr(self, name) < 0:
                raise SettingsError(f"{_flag(name)}: must be 0 or more")
        if not 0 <= self.loop_batch_window <= 1:
            raise SettingsError("--loop-batch-window: must be between 0 and 1")
        if self.agent_heartbeat_interval > _MAX_HEARTBEAT_INTERVAL:
            raise SettingsError(f"--agent-heartbeat-interval: must be at most {_MAX_HEARTBEAT_INTERVAL}")
        self._check_node_timing()

    def _check_node_timing(self) -> None:
        if self.drain_retry_window < 1:
            raise SettingsError("--drain-retry-window: must be at least 1")
        # The refresh runs every third of the TTL; below 3 s it would hammer Redis.
        if self.owner_ttl < 3:
            raise SettingsError("--owner-ttl: must be at least 3")
        # Beats go every third of it; below 1.5 s a busy event loop would make a node flicker.
        if not 1.5 <= self.node_ttl <= self.owner_ttl:
            raise SettingsError("--node-ttl: must be at least 1.5 and at most --owner-ttl")
        if not 0 <= self.max_connection_age_jitter <= 1:
            raise SettingsError("--max-connection-age-jitter: must be between 0 and 1")
        # A connected agent's stored last_seen lags by up to ~0.6 x --offline-after (node/liveness.py).
        if self.forget_after != 0 and self.forget_after <= self.offline_window:
            raise SettingsError(
                "--forget-after: must be 0 (never) or more than --offline-after and more than "
                f"{HEARTBEATS_MISSED} x --agent-heartbeat-interval"
            )

    def _check_credentials(self) -> None:
        if self.agent_credentials not in AGENT_CREDENTIALS:
            raise SettingsError(f"--agent-credentials: must be one of {', '.join(AGENT_CREDENTIALS)}")
        if self.public_opamp_url:
            problem = _url_problem(self.public_opamp_url)
            if problem:
                raise SettingsError(f"--public-opamp-url: {problem}")
        if self.agent_credentials != "per-agent":
            return
        if not self.public_opamp_url:
            raise SettingsError(
                "--public-opamp-url: required with --agent-credentials per-agent (the endpoint offered "
                "to agents with their credential, e.g. wss://opamp.example.com/v1/opamp)"
            )
        if not self.agent_auth:
            raise SettingsError(
                "--agent-credentials: per-agent needs agent keys (--agent-keys-file or --agent-keys): "
                "agents enroll with one before they get a credential of their own"
            )
        if self.agent_heartbeat_interval == 0:
            raise SettingsError(
                "--agent-heartbeat-interval: must be above 0 with --agent-credentials per-agent (the "
                "opamp settings that carry each credential carry the interval; 0 would tell agents that "
                "report heartbeats to stop)"
            )

    @property
    def credential_endpoint(self) -> str:
        """The endpoint offered with per-agent credentials ("": per-agent credentials are off)."""
        return self.public_opamp_url if self.agent_credentials == "per-agent" else ""

    def _check_elasticsearch(self) -> None:
        if self.elasticsearch_url and not self.elasticsearch_url.startswith(("http://", "https://")):
            raise SettingsError("--elasticsearch-url: must start with http:// or https://")
        if self.elasticsearch_api_key and (self.elasticsearch_username or self.elasticsearch_password):
            raise SettingsError(
                "--elasticsearch-api-key: give an API key or --elasticsearch-username and "
                "--elasticsearch-password, not both"
            )
        if bool(self.elasticsearch_username) != bool(self.elasticsearch_password):
            raise SettingsError(
                "--elasticsearch-username: needs --elasticsearch-password, and the other way round"
            )
        for name in ("elasticsearch_agents_alias", "elasticsearch_configs_alias"):
            if not _INDEX_NAME.match(getattr(self, name)):
                raise SettingsError(
                    f"{_flag(name)}: must be a lower-case Elasticsearch index name (a-z, 0-9, '-', '_', '.', "
                    "not starting with '-', '_' or '.')"
                )
        if self.elasticsearch_agents_alias == self.elasticsearch_configs_alias:
            raise SettingsError(
                "--elasticsearch-configs-alias: must differ from --elasticsearch-agents-alias"
            )
        if not _REFRESH_INTERVAL.match(self.elasticsearch_refresh_interval):
            raise SettingsError(
                "--elasticsearch-refresh-interval: must be a time like 5s, 500ms or 1m, or -1 (refresh off)"
            )

    @property
    def offline_window(self) -> float:
        """Seconds without a message before an agent shows offline: --offline-after, or three
        heartbeat intervals when that is longer (an agent is offline after 3 missed heartbeats)."""
        return max(self.offline_after, HEARTBEATS_MISSED * self.agent_heartbeat_interval)

    @property
    def ws_idle_timeout(self) -> float:
        """Seconds a WebSocket may carry no message before it is handed to its connection (0:
        never): --idle-timeout, or three heartbeat intervals when that is longer."""
        if self.idle_timeout <= 0:
            return 0.0
        return max(self.idle_timeout, HEARTBEATS_MISSED * self.agent_heartbeat_interval)

    @property
    def agent_auth(self) -> bool:
        """Agents must present a key."""
        return bool(self.agent_keys_file or self.agent_keys.strip(", "))

    @property
    def admin_auth(self) -> bool:
        """The admin API needs a token."""
        return bool(self.admin_token_file)

    @property
    def allowed_admin_hosts(self) -> tuple[str, ...]:
        """--admin-allowed-hosts as a list of names."""
        return tuple(part.strip() for part in self.admin_allowed_hosts.split(",") if part.strip())

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert)


def _url_problem(url: str) -> str:
    """Why `url` cannot be offered as the OpAMP endpoint ("" if it can)."""
    if url != url.strip() or any(c.isspace() or ord(c) < 32 for c in url):
        return "must not contain spaces or control characters"
    try:
        parsed = urllib.parse.urlsplit(url)
        parsed.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError as exc:
        return f"not a URL: {exc}"
    if parsed.scheme not in _URL_SCHEMES:
        return f"must start with {', '.join(s + '://' for s in _URL_SCHEMES)} (got {url[:80]!r})"
    if not parsed.hostname:
        return "must name a host, e.g. wss://opamp.example.com/v1/opamp"
    if parsed.fragment or parsed.username or parsed.password:
        return "must not carry a fragment or user information"
    return ""


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def env_name(name: str) -> str:
    return ENV_PREFIX + name.upper()


def _parse_bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"not a boolean: {text!r}")


def _caster(f: dataclasses.Field[Any]) -> Callable[[str], Any]:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "str")
    if kind == "int":
        return int
    if kind == "float":
        return float
    if kind == "bool":
        return _parse_bool
    return str


def add_arguments(parser: argparse.ArgumentParser) -> None:
    for f in dataclasses.fields(Settings):
        help_text = f"{f.metadata.get('help', '')} [env {env_name(f.name)}]"
        if _caster(f) is _parse_bool:
            parser.add_argument(_flag(f.name), dest=f.name, action="store_true", default=None, help=help_text)
        else:
            parser.add_argument(_flag(f.name), dest=f.name, default=None, help=help_text)


def from_namespace(args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Settings:
    """Flags win over OPAMP_GATEWAY_* variables, which win over defaults."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in dataclasses.fields(Settings):
        cast = _caster(f)
        raw = getattr(args, f.name, None)
        if raw is not None and not isinstance(raw, str):
            values[f.name] = raw
            continue
        source = _flag(f.name)
        if raw is None:
            if env_name(f.name) not in env:
                continue
            raw, source = env[env_name(f.name)], env_name(f.name)
        try:
            values[f.name] = cast(raw)
        except ValueError:
            raise SettingsError(f"{source}: cannot read {raw!r} as {cast.__name__.lstrip('_')}") from None
    return Settings(**values)


def load(argv: Sequence[str] = (), environ: Mapping[str, str] | None = None) -> Settings:
    """Build settings from serve-style flags; for tests and embedding."""
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_arguments(parser)
    return from_namespace(parser.parse_args(list(argv)), environ)
