"""The gateway's own view of a timed phase, from its Prometheus counters: how many heartbeats it
handled, and that it asked no agent for its full state and shed nothing while wrk was running."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

from bench import client

logger = logging.getLogger("bench.gateway_metrics")


@dataclass(frozen=True)
class Counters:
    heartbeats: float = 0.0
    other_events: float = 0.0
    full_state_requests: float = 0.0
    shed: float = 0.0
    non_200: float = 0.0

    def __sub__(self, earlier: Counters) -> Counters:
        return Counters(
            heartbeats=self.heartbeats - earlier.heartbeats,
            other_events=self.other_events - earlier.other_events,
            full_state_requests=self.full_state_requests - earlier.full_state_requests,
            shed=self.shed - earlier.shed,
            non_200=self.non_200 - earlier.non_200,
        )


def scrape(host: str, admin_port: int) -> Counters:
    reply = client.get(host, admin_port, "/metrics")
    if reply.status != 200:
        raise RuntimeError(f"GET /metrics answered HTTP {reply.status}")
    values = {"heartbeats": 0.0, "other_events": 0.0, "full_state_requests": 0.0, "shed": 0.0, "non_200": 0.0}
    for family in text_string_to_metric_families(reply.body.decode()):
        for sample in family.samples:
            if sample.name == "opamp_gateway_agent_events_total":
                key = "heartbeats" if sample.labels.get("event") == "heartbeat" else "other_events"
                values[key] += sample.value
            elif sample.name == "opamp_gateway_full_state_requests_total":
                values["full_state_requests"] += sample.value
            elif sample.name == "opamp_gateway_shed_requests_total":
                values["shed"] += sample.value
            elif sample.name == "opamp_gateway_messages_total" and sample.labels.get("result") != "200":
                values["non_200"] += sample.value
    return Counters(**values)


def problems(delta: Counters, requests: int, connections: int) -> list[str]:
    """What in the gateway's counters says the phase was not `requests` plain heartbeats."""
    found = []
    if delta.full_state_requests:
        found.append(f"gateway requested full state {delta.full_state_requests:.0f} times")
    if delta.shed or delta.non_200:
        found.append(f"gateway shed {delta.shed:.0f} and answered {delta.non_200:.0f} non-200")
    if delta.other_events:
        found.append(f"gateway saw {delta.other_events:.0f} messages that were not heartbeats")
    # Requests still in flight when wrk stopped are handled by the gateway but not counted by wrk.
    if not requests <= delta.heartbeats <= requests + connections:
        found.append(f"gateway counted {delta.heartbeats:.0f} heartbeats, wrk {requests}")
    return found
