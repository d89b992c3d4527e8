"""A simulated agent's protocol behaviour, without I/O: what it sends and how it answers a reply.

Both Locust users (WebSocket and HTTP) drive one `SimAgent` each, so the two transports behave the
same way: a full first report, heartbeats with `sequence_num` + 1, a full report again when the
server asks (`ReportFullState`), a new uid adopted when offered, a pushed config reported APPLYING
then APPLIED, and the server's `retry_info` honoured.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from gateway.proto import anyvalue_pb2, opamp_pb2 as pb

CAPABILITIES = (
    pb.AgentCapabilities_ReportsStatus
    | pb.AgentCapabilities_AcceptsRemoteConfig
    | pb.AgentCapabilities_ReportsEffectiveConfig
    | pb.AgentCapabilities_ReportsHealth
    | pb.AgentCapabilities_ReportsRemoteConfig
    | pb.AgentCapabilities_ReportsHeartbeat
    | pb.AgentCapabilities_AcceptsRestartCommand
)
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


def new_uid() -> bytes:
    """A UUIDv7, as opamp-go and the collector mint them: 48-bit ms timestamp, then random bits."""
    raw = bytearray(int(time.time() * 1000).to_bytes(6, "big") + os.urandom(10))
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
    seq: int = -1
    applied_hash: bytes = b""
    effective: dict[str, bytes] = field(default_factory=lambda: {"": _INITIAL_CONFIG})
    # Set when the next message must be a full report (first contact, or the server asked).
    full_report_due: bool = True

    def next_message(self) -> tuple[str, pb.AgentToServer]:
        """The next scheduled message: a full report when due, otherwise a heartbeat."""
        if self.full_report_due:
            return "full report", self.full_report()
        return "heartbeat", self._message()

    def _message(self) -> pb.AgentToServer:
        self.seq += 1
        return pb.AgentToServer(instance_uid=self.uid, sequence_num=self.seq, capabilities=CAPABILITIES)

    def full_report(self) -> pb.AgentToServer:
        self.full_report_due = False
        msg = self._message()
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
        desc.non_identifying_attributes.extend(
            [
                _kv("os.type", "linux"),
                _kv("host.arch", "amd64"),
                _kv("host.name", f"loadtest-{os.getpid()}-{self.index:06d}"),
            ]
        )
        msg.health.healthy = True
        msg.health.start_time_unix_nano = _START_NANOS
        msg.health.status_time_unix_nano = _START_NANOS
        msg.health.status = "StatusOK"
        self._effective_into(msg)
        if self.applied_hash:
            msg.remote_config_status.last_remote_config_hash = self.applied_hash
            msg.remote_config_status.status = pb.RemoteConfigStatuses_APPLIED
        return msg

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
        applying = self._message()
        applying.remote_config_status.last_remote_config_hash = config.config_hash
        applying.remote_config_status.status = pb.RemoteConfigStatuses_APPLYING
        self.applied_hash = config.config_hash
        self.effective = {name: file.body for name, file in config.config.config_map.items()}
        applied = self.full_report() if self.full_report_due else self._message()
        applied.remote_config_status.last_remote_config_hash = config.config_hash
        applied.remote_config_status.status = pb.RemoteConfigStatuses_APPLIED
        self._effective_into(applied)
        reaction.send += [("config applying", applying), ("config applied", applied)]
        written = changed_at(config)
        reaction.applied = (config.config_hash, None if written is None else max(0.0, now - written))

    def goodbye(self) -> pb.AgentToServer:
        msg = self._message()
        msg.agent_disconnect.SetInParent()
        return msg
