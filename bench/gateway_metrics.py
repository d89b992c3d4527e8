"""The gateway's own view of a timed phase, from its Prometheus counters: how many heartbeats it
handled, and that it asked no agent for its full state and shed nothing while the load ran. Also
how many WebSockets it holds, for the idle-socket memory run."""

from __future__ import annotations

import logging
from dataclasses import dataclass, fields

from prometheus_client.parser import text_string_to_metric_families

from bench import client

logger = logging.getLogger("bench.gateway_metrics")

# The `result` label of opamp_gateway_messages_total for a message handled normally, per transport.
SUCCESS = {"http": "200", "websocket": "ok"}


@dataclass(frozen=True)
class Counters:
    heartbeats: float = 0.0
    other_events: float = 0.0
    full_state_requests: float = 0.0
    shed: float = 0.0
    # Messages of the transport scraped for whose result was not a success (HTTP: not 200).
    failed: float = 0.0
    # Gauges: the value at scrape time (a difference of two is a change, not a count).
    websocket_connections: float = 0.0
    websocket_agents: float = 0.0
    writer_queue_depth: float = 0.0
    # Seconds the garbage collector stopped the node (all generations).
    gc_seconds: float = 0.0

    def __sub__(self, earlier: Counters) -> Counters:
        return Counters(**{f.name: getattr(self, f.name) - getattr(earlier, f.name) for f in fields(self)})


def _add(values: dict[str, float], transport: str, name: str, labels: dict[str, str], value: float) -> None:
    if name == "opamp_gateway_agent_events_total":
        values["heartbeats" if labels.get("event") == "heartbeat" else "other_events"] += value
    elif name == "opamp_gateway_full_state_requests_total":
        values["full_state_requests"] += value
    elif name == "opamp_gateway_shed_requests_total":
        values["shed"] += value
    elif name == "opamp_gateway_messages_total":
        if labels.get("transport") == transport and labels.get("result") != SUCCESS[transport]:
            values["failed"] += value
    elif name == "opamp_gateway_websocket_connections":
        values["websocket_connections"] = value
    elif name == "opamp_gateway_connected_agents" and labels.get("transport") == "websocket":
        values["websocket_agents"] = value
    elif name == "opamp_gateway_writer_queue_depth":
        values["writer_queue_depth"] = value
    elif name == "opamp_gateway_gc_seconds_total":
        values["gc_seconds"] += value


def scrape(host: str, admin_port: int, transport: str = "http") -> Counters:
    """The counters now; `failed` counts only messages that came over `transport`."""
    reply = client.get(host, admin_port, "/metrics")
    if reply.status != 200:
        raise RuntimeError(f"GET /metrics answered HTTP {reply.status}")
    values = {f.name: 0.0 for f in fields(Counters)}
    for family in text_string_to_metric_families(reply.body.decode()):
        for sample in family.samples:
            _add(values, transport, sample.name, sample.labels, sample.value)
    return Counters(**values)


def problems(delta: Counters, requests: int, in_flight: int, transport: str = "http") -> list[str]:
    """What in the gateway's counters says the phase was not `requests` plain heartbeats (up to
    `in_flight` more that the load generator sent but did not count)."""
    found = []
    if delta.full_state_requests:
        found.append(f"gateway requested full state {delta.full_state_requests:.0f} times")
    if delta.shed or delta.failed:
        what = "non-200" if transport == "http" else "not ok"
        found.append(f"gateway shed {delta.shed:.0f} and answered {delta.failed:.0f} {what}")
    if delta.other_events:
        found.append(f"gateway saw {delta.other_events:.0f} messages that were not heartbeats")
    if not requests <= delta.heartbeats <= requests + in_flight:
        found.append(f"gateway counted {delta.heartbeats:.0f} heartbeats, the load generator {requests}")
    return found
