"""The simulated fleet: agent uids, their first full report and their heartbeats.

A simulated agent looks like an OpenTelemetry Collector with the opamp extension: it reports status,
health and its effective config, and sends heartbeats. Its first message is a full report (so the
gateway enrolls it), every later one a heartbeat carrying only instance_uid, sequence_num (previous
+ 1) and capabilities, which is what the wrk script sends too.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

import uuid6

from gateway.proto import anyvalue_pb2, opamp_pb2 as pb

AGENT_CAPABILITIES = (
    pb.AgentCapabilities_ReportsStatus
    | pb.AgentCapabilities_AcceptsRemoteConfig
    | pb.AgentCapabilities_ReportsEffectiveConfig
    | pb.AgentCapabilities_ReportsHealth
    | pb.AgentCapabilities_ReportsRemoteConfig
    | pb.AgentCapabilities_ReportsHeartbeat
)

_CONFIG_YAML = b"""receivers:
  otlp:
    protocols:
      grpc: {endpoint: 0.0.0.0:4317}
      http: {endpoint: 0.0.0.0:4318}
processors:
  batch: {}
  memory_limiter: {check_interval: 1s, limit_percentage: 80}
exporters:
  otlphttp: {endpoint: https://collector.example.com:4318}
extensions:
  opamp:
    server: {http: {endpoint: http://127.0.0.1:4320/v1/opamp, polling_interval: 30s}}
service:
  extensions: [opamp]
  pipelines:
    traces: {receivers: [otlp], processors: [memory_limiter, batch], exporters: [otlphttp]}
    metrics: {receivers: [otlp], processors: [memory_limiter, batch], exporters: [otlphttp]}
    logs: {receivers: [otlp], processors: [memory_limiter, batch], exporters: [otlphttp]}
"""
_START_NANOS = 1_700_000_000_000_000_000


@dataclass
class Agent:
    uid: bytes
    index: int
    # The last sequence_num sent; the next message carries seq + 1.
    seq: int = 0
    capabilities: int = AGENT_CAPABILITIES


def make_fleet(count: int, seed: int = 1) -> list[Agent]:
    """`count` agents with UUIDv7 uids, as opamp-go mints them; the seed only makes runs comparable."""
    rng = random.Random(seed)
    agents = []
    for index in range(count):
        # uuid7's random bits from our generator: distinct, time-ordered, reproducible per seed.
        raw = bytearray(uuid6.uuid7().bytes)
        raw[6:] = rng.randbytes(10)
        raw[6] = (raw[6] & 0x0F) | 0x70
        raw[8] = (raw[8] & 0x3F) | 0x80
        agents.append(Agent(uid=bytes(raw), index=index))
    return agents


def _kv(key: str, value: str) -> anyvalue_pb2.KeyValue:
    return anyvalue_pb2.KeyValue(key=key, value=anyvalue_pb2.AnyValue(string_value=value))


def full_report(agent: Agent) -> pb.AgentToServer:
    """The message an agent sends first: description, health and effective config."""
    msg = pb.AgentToServer(instance_uid=agent.uid, sequence_num=agent.seq, capabilities=agent.capabilities)
    desc = msg.agent_description
    desc.identifying_attributes.extend(
        [
            _kv("service.name", "otelcol-contrib"),
            _kv("service.version", "0.120.0"),
            _kv("service.instance.id", agent.uid.hex()),
        ]
    )
    desc.non_identifying_attributes.extend(
        [
            _kv("os.type", "linux"),
            _kv("host.arch", "amd64"),
            _kv("host.name", f"bench-host-{agent.index:05d}"),
        ]
    )
    health = msg.health
    health.healthy = True
    health.start_time_unix_nano = _START_NANOS
    health.status_time_unix_nano = _START_NANOS
    health.status = "StatusOK"
    for pipeline in ("traces", "metrics", "logs"):
        component = health.component_health_map[f"pipeline:{pipeline}"]
        component.healthy = True
        component.status = "StatusOK"
        component.start_time_unix_nano = _START_NANOS
    config_file = msg.effective_config.config_map.config_map[""]
    config_file.body = _CONFIG_YAML
    config_file.content_type = "text/yaml"
    return msg


def heartbeat(agent: Agent) -> pb.AgentToServer:
    """A heartbeat with the agent's current seq (call `agent.seq += 1` first); same bytes as wrk sends."""
    return pb.AgentToServer(instance_uid=agent.uid, sequence_num=agent.seq, capabilities=agent.capabilities)


def write_agents_file(agents: list[Agent], path: Path) -> None:
    """The wrk script's input: `<uid hex> <last seq sent> <capabilities>` a line."""
    path.write_text("".join(f"{a.uid.hex()} {a.seq} {a.capabilities}\n" for a in agents))


def read_state_file(agents: list[Agent], path: Path) -> list[Agent]:
    """Apply the wrk script's output to the fleet; return the agents whose last request got no reply."""
    in_flight = []
    for line in path.read_text().splitlines():
        index, seq, pending = (int(part) for part in line.split())
        agents[index].seq = seq
        if pending:
            in_flight.append(agents[index])
    return in_flight
