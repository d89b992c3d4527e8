"""The simulated fleet: agents (harness.agent.SimAgent) with reproducible uids, and the wrk script's
files.

A simulated agent looks like an OpenTelemetry Collector with the opamp extension: it reports status,
health and its effective config, and sends heartbeats. Its first message is a full report (so the
gateway enrolls it), every later one a heartbeat carrying only instance_uid, sequence_num (previous
+ 1) and capabilities, which is what the wrk script sends too.
"""

from __future__ import annotations

import random
from pathlib import Path

from harness.agent import COLLECTOR_CAPABILITIES, Look, SimAgent, new_uid

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
# A collector with three pipelines, each reporting its health: what every benchmark enrolls.
BENCH_LOOK = Look(
    host_name="bench-host-{index:05d}", config=_CONFIG_YAML, pipelines=("traces", "metrics", "logs")
)


def make_fleet(count: int, seed: int = 1) -> list[SimAgent]:
    """`count` agents with UUIDv7 uids, as opamp-go mints them; the seed only makes runs comparable."""
    rng = random.Random(seed)
    return [
        # uuid7's random bits from our generator: distinct, time-ordered, reproducible per seed.
        SimAgent(
            index=index, uid=new_uid(rng.randbytes(10)), capabilities=COLLECTOR_CAPABILITIES, look=BENCH_LOOK
        )
        for index in range(count)
    ]


def write_agents_file(agents: list[SimAgent], path: Path) -> None:
    """The wrk script's input: `<uid hex> <last seq sent> <capabilities>` a line."""
    path.write_text("".join(f"{a.uid.hex()} {a.seq} {a.capabilities}\n" for a in agents))


def read_state_file(agents: list[SimAgent], path: Path) -> list[SimAgent]:
    """Apply the wrk script's output to the fleet; return the agents whose last request got no reply."""
    in_flight = []
    for line in path.read_text().splitlines():
        index, seq, pending = (int(part) for part in line.split())
        agents[index].seq = seq
        if pending:
            in_flight.append(agents[index])
    return in_flight
