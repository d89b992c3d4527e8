"""A simulated agent's protocol behaviour, without I/O: what it sends and how it answers a reply.

One model for every simulated agent: the Locust users (loadtest, over WebSocket and HTTP) and the
benchmarks' fleets (bench) drive `SimAgent`s, so they behave alike: a full first report, heartbeats
with `sequence_num` + 1, a full report again when the server asks (`ReportFullState`), a new uid
adopted when offered, a pushed config reported APPLYING then APPLIED, and the server's `retry_info`
honoured. What an agent says about itself in a full report is its `Look`.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from gateway.proto import anyvalue_pb2, opamp_pb2 as pb

# An OpenTelemetry Collector with the opamp extension: status, health, configs and heartbeats.
COLLECTOR_CAPABILITIES = (
    pb.AgentCapabilities_ReportsStatus
    | pb.AgentCapabilities_AcceptsRemoteConfig
    | pb.AgentCapabilities_ReportsEffectiveConfig
    | pb.AgentCapabilities_ReportsHealth
    | pb.AgentCapabilities_ReportsRemoteConfig
    | pb.AgentCapabilities_ReportsHeartbeat
)
# The same under a supervisor, which can also restart it.
CAPABILITIES = COLLECTOR_CAPABILITIES | pb.AgentCapabilities_AcceptsRestartCommand
SERVICE_NAME = "otelcol-contrib"
# A config body may carry this marker with the Unix time it was written; the agent then reports
# how long the change took to reach it (the "config convergence" measurement).
CHANGED_AT_MARKER = b"# opamp-loadtest changed_at="
_START_NANOS = 1_700_000_000_000_000_000
_INITIAL_CONFIG = b"""receivers:
  otlp: {protocols: {grpc: {endpoint: 0.0.0.0:4317}}}
exporters:
  otlphttp: {endpoint: https://collector.example.com:4318}
service:
  pipelines:
    traces: {receivers: [otlp], exporters: [otlphttp]}
"""


def new_uid(random_bits: bytes | None = None) -> bytes:
    """A UUIDv7, as opamp-go and the collector mint them: 48-bit ms timestamp, then random bits
    (`random_bits`, 10 bytes, for a reproducible fleet; fresh ones by default)."""
    raw = bytearray(int(time.time() * 1000).to_bytes(6, "big") + (random_bits or os.urandom(10)))
    raw[6] = (raw[6] & 0x0F) | 0x70
    raw[8] = (raw[8] & 0x3F) | 0x80
    return bytes(raw)


def _kv(key: str, value: str) -> anyvalue_pb2.KeyValue:
    return anyvalue_pb2.KeyValue(key=key, value=anyvalue_pb2.AnyValue(string_value=value))


def changed_at(config: pb.AgentRemoteConfig) -> float | None:
    """The Unix time a config was written, if its body carries the load test's marker."""
    for file in config.config.config_map.values():
        start = file.body.find(CHANGED_AT_MARKER)
        if start >= 0:
            end = file.body.find(b"\n", start)
            text = file.body[start + len(CHANGED_AT_MARKER) : end if end >= 0 else None]
            try:
                return float(text)
            except ValueError:
                return None
    return None


def _config_status(
    msg: pb.AgentToServer, config_hash: bytes, status: pb.RemoteConfigStatuses
) -> pb.AgentToServer:
    msg.remote_config_status.last_remote_config_hash = config_hash
    msg.remote_config_status.status = status
    return msg


def reply_problem(reply: pb.ServerToAgent, uid: bytes | None) -> tuple[str, str] | None:
    """What is wrong with a reply to an enrolled agent in step with the server, as (kind, detail):
    kind "error_response", "full_state" or (given the uid it was sent by) "wrong_uid"; None if
    nothing is."""
    if reply.HasField("error_response"):
        return "error_response", reply.error_response.error_message
    if reply.flags & pb.ServerToAgentFlags_ReportFullState:
        return "full_state", "ReportFullState requested"
    if uid is not None and reply.instance_uid != uid:
        return "wrong_uid", f"reply for {reply.instance_uid.hex()}, sent {uid.hex()}"
    return None


@dataclass(frozen=True)
class Look:
    """What an agent says about itself in a full report, besides its uid."""

    # `{pid}` and `{index}` are filled in.
    host_name: str = "loadtest-{pid}-{index:06d}"
    # The effective config it starts with (one unnamed YAML file).
    config: bytes = _INITIAL_CONFIG
    # Pipelines whose component health it reports (none: only its own health).
    pipelines: tuple[str, ...] = ()


@dataclass
class Reaction:
    """What the agent does after a reply: send these messages now, maybe after waiting."""

    send: list[tuple[str, pb.AgentToServer]] = field(default_factory=list)
    # The server refused the message and said when to try again (seconds), or None.
    retry_after: float | None = None
    # The server refused the message; the text says why.
    error: str | None = None
    # A config was applied: (config hash, seconds since it was written, if it said).
    applied: tuple[bytes, float | None] | None = None
    restart: bool = False


@dataclass
class SimAgent:
    """One agent's state: uid, last sequence number sent, and its config as last applied."""

    index: int
    uid: bytes = field(default_factory=new_uid)
    request_uid: bool = False
    # The last sequence_num sent (-1: none yet); every message carries seq + 1.
    seq: int = -1
    capabilities: int = CAPABILITIES
    look: Look = field(default_factory=Look)
    applied_hash: bytes = b""
    # Its effective config by file name (default: the look's).
    effective: dict[str, bytes] = field(default_factory=dict)
    # Set when the next message must be a full report (first contact, or the server asked).
    full_report_due: bool = True

    def __post_init__(self) -> None:
        if not self.effective:
            self.effective = {"": self.look.config}

    def next_message(self) -> tuple[str, pb.AgentToServer]:
        """The next scheduled message: a full report when due, otherwise a heartbeat."""
        if self.full_report_due:
            return "full report", self.full_report()
        return "heartbeat", self.heartbeat()

    def heartbeat(self) -> pb.AgentToServer:
        """The next message with nothing to report: uid, sequence_num and capabilities only."""
        self.seq += 1
        return pb.AgentToServer(instance_uid=self.uid, sequence_num=self.seq, capabilities=self.capabilities)

    def full_report(self) -> pb.AgentToServer:
        """The next message with everything: description, health, effective config, config status."""
        self.full_report_due = False
        msg = self.heartbeat()
        if self.request_uid and self.seq == 0:
            msg.flags = pb.AgentToServerFlags_RequestInstanceUid
        desc = msg.agent_description
        desc.identifying_attributes.extend(
            [
                _kv("service.name", SERVICE_NAME),
                _kv("service.version", "0.120.0"),
                _kv("service.instance.id", self.uid.hex()),
            ]
        )
        host_name = self.look.host_name.format(pid=os.getpid(), index=self.index)
        desc.non_identifying_attributes.extend(
            [_kv("os.type", "linux"), _kv("host.arch", "amd64"), _kv("host.name", host_name)]
        )
        health = msg.health
        health.healthy = True
        health.start_time_unix_nano = _START_NANOS
        health.status_time_unix_nano = _START_NANOS
        health.status = "StatusOK"
        for pipeline in self.look.pipelines:
            component = health.component_health_map[f"pipeline:{pipeline}"]
            component.healthy = True
            component.status = "StatusOK"
            component.start_time_unix_nano = _START_NANOS
        self._effective_into(msg)
        if self.applied_hash:
            _config_status(msg, self.applied_hash, pb.RemoteConfigStatuses_APPLIED)
        return msg

    def config_status(self, config_hash: bytes, status: pb.RemoteConfigStatuses) -> pb.AgentToServer:
        """The next message, reporting `status` (a RemoteConfigStatuses value) for a config."""
        return _config_status(self.heartbeat(), config_hash, status)

    def _effective_into(self, msg: pb.AgentToServer) -> None:
        for name, body in self.effective.items():
            file = msg.effective_config.config_map.config_map[name]
            file.body = body
            file.content_type = "text/yaml"

    def react(self, reply: pb.ServerToAgent, now: float | None = None) -> Reaction:
        """Answer one ServerToAgent (a reply or a push) the way an OpAMP agent must."""
        reaction = Reaction()
        if reply.HasField("error_response"):
            error = reply.error_response
            if error.type == pb.ServerErrorResponseType_Unavailable:
                retry = error.retry_info.retry_after_nanoseconds if error.HasField("retry_info") else 0
                reaction.retry_after = retry / 1e9 if retry else 1.0
            reaction.error = error.error_message or pb.ServerErrorResponseType.Name(error.type)
            # A refused message was not processed; the server must see it again.
            self.full_report_due = True
            return reaction
        if reply.HasField("agent_identification") and reply.agent_identification.new_instance_uid:
            self.uid = reply.agent_identification.new_instance_uid
        if reply.flags & pb.ServerToAgentFlags_ReportFullState:
            self.full_report_due = True
        if reply.HasField("command") and reply.command.type == pb.CommandType_Restart:
            reaction.restart = True
        if reply.HasField("remote_config") and reply.remote_config.config_hash != self.applied_hash:
            self._apply(reply.remote_config, reaction, time.time() if now is None else now)
        elif self.full_report_due:
            reaction.send.append(("full report", self.full_report()))
        return reaction

    def _apply(self, config: pb.AgentRemoteConfig, reaction: Reaction, now: float) -> None:
        applying = self.config_status(config.config_hash, pb.RemoteConfigStatuses_APPLYING)
        self.applied_hash = config.config_hash
        self.effective = {name: file.body for name, file in config.config.config_map.items()}
        applied = self.full_report() if self.full_report_due else self.heartbeat()
        _config_status(applied, config.config_hash, pb.RemoteConfigStatuses_APPLIED)
        self._effective_into(applied)
        reaction.send += [("config applying", applying), ("config applied", applied)]
        written = changed_at(config)
        reaction.applied = (config.config_hash, None if written is None else max(0.0, now - written))

    def goodbye(self) -> pb.AgentToServer:
        msg = self.heartbeat()
        msg.agent_disconnect.SetInParent()
        return msg
