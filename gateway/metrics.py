"""Prometheus metrics, on a registry of the gateway's own (several gateways can share a process in tests)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from gateway import __version__
from gateway.hot_metrics import HotCounter, HotHistogram
from gateway.limits import SHED_REASONS
from gateway.opamp.engine import Event

if TYPE_CHECKING:
    from collections.abc import Callable

    from gateway.limits import Limits
    from gateway.opamp.engine import Outcome

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.build = Info("opamp_gateway_build", "Version and protobuf backend", registry=r)
        # Updated on every message: plain numbers, no lock (hot_metrics.py).
        self.messages = HotCounter(
            "opamp_gateway_messages_total",
            "AgentToServer messages handled, by transport and result (HTTP: status code; WebSocket: "
            "ok, rejected or unavailable)",
            ["transport", "result"],
            r,
        )
        self.latency = HotHistogram(
            "opamp_gateway_message_duration_seconds",
            "Time to handle one AgentToServer, reply included",
            "transport",
            _LATENCY_BUCKETS,
            r,
        )
        self.events = HotCounter(
            "opamp_gateway_agent_events_total",
            "Engine decisions: enrolled, moved, reported, heartbeat, disconnected, rejected",
            ["event"],
            r,
        )
        self.full_state_requests = Counter(
            "opamp_gateway_full_state_requests_total", "Replies that set ReportFullState", registry=r
        )
        self.shed = Counter(
            "opamp_gateway_shed_requests_total",
            "Requests refused to protect the gateway, by reason",
            ["reason"],
            registry=r,
        )
        for reason in SHED_REASONS:
            self.shed.labels(reason=reason)
        self.enrollments = Counter(
            "opamp_gateway_enrollments_total", "Agents seen for the first time (new records)", registry=r
        )
        self.agents_forgotten = Counter(
            "opamp_gateway_agents_forgotten_total",
            "Agent records deleted, by reason (retention: --forget-after; admin: DELETE /api/v1/agents)",
            ["reason"],
            registry=r,
        )
        self.uid_moves = Counter(
            "opamp_gateway_uid_moves_total",
            "Records moved to a server-assigned instance_uid (RequestInstanceUid from a known agent)",
            registry=r,
        )
        self.writer_depth = Gauge(
            "opamp_gateway_writer_queue_depth", "Agents with writes not yet flushed", registry=r
        )
        self.writer_held = Gauge(
            "opamp_gateway_writer_held_heartbeats",
            "HTTP agents whose latest heartbeats the writer holds in memory (a node that is the whole fleet)",
            registry=r,
        )
        self.flush_size = Histogram(
            "opamp_gateway_store_flush_size",
            "Agent writes per store commit",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2500),
            registry=r,
        )
        self.flush_latency = Histogram(
            "opamp_gateway_store_flush_duration_seconds",
            "Time per store commit",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.store_errors = Counter("opamp_gateway_store_errors_total", "Failed store operations", registry=r)
        self.gc_seconds = Counter(
            "opamp_gateway_gc_seconds_total",
            "Time the cyclic garbage collector stopped the node (only `opamp-gateway serve` measures it)",
            ["generation"],
            registry=r,
        )
        self._connection_metrics(r)
        self._store_metrics(r)
        self._protection_metrics(r)
        self._bind_hot_children()

    def _bind_hot_children(self) -> None:
        """Bind the labelled children updated per message once, at startup: a labels() lookup costs
        more than the update itself. Children bound here also show at 0 before their first use."""
        for result in ("ok", "rejected", "unavailable"):
            self.messages.child("websocket", result)
        for transport in ("http", "websocket"):
            self.latency.child(transport)
        for event in get_args(Event):
            self.events.child(event)
        self._config_in_reply = self.pushes.labels(kind="config", delivery="reply")
        self._config_reports = {
            status: self.config_reports.labels(status=status)
            for status in ("UNSET", "APPLIED", "APPLYING", "FAILED", "unknown")
        }

    def _protection_metrics(self, r: CollectorRegistry) -> None:
        self.auth_failures = Counter(
            "opamp_gateway_auth_failures_total",
            "Requests refused with 401, by port (opamp, admin) and reason (missing, invalid)",
            ["port", "reason"],
            registry=r,
        )
        for port in ("opamp", "admin"):
            for reason in ("missing", "invalid"):
                self.auth_failures.labels(port=port, reason=reason)
        self.key_mismatches = Counter(
            "opamp_gateway_agent_key_mismatches_total",
            "Messages refused because their instance_uid is bound to another agent key "
            "(HTTP 401, WebSocket close 1008), by transport",
            ["transport"],
            registry=r,
        )
        for transport in ("http", "websocket"):
            self.key_mismatches.labels(transport=transport)
        self.agent_credentials = Counter(
            "opamp_gateway_agent_credentials_total",
            "Per-agent credential events on this node: minted (offered), activated (first used or "
            "reported applied), rotation_requested, revoked (admin API), refused (a message or socket "
            "refused for its uid's credentials: HTTP 401, WebSocket close 1008)",
            ["event"],
            registry=r,
        )
        for event in ("minted", "activated", "rotation_requested", "revoked", "refused"):
            self.agent_credentials.labels(event=event)
        self.credential_file_errors = Counter(
            "opamp_gateway_credential_file_errors_total",
            "Agent key (agent) or admin token (admin) files found unreadable, empty or malformed on re-read",
            ["kind"],
            registry=r,
        )
        for kind in ("agent", "admin"):
            self.credential_file_errors.labels(kind=kind)
        self.inflight = Gauge(
            "opamp_gateway_inflight_messages", "Agent messages being handled right now", registry=r
        )
        self.unfinished = Gauge(
            "opamp_gateway_unfinished_requests",
            "HTTP connections whose request has not fully arrived, by port and by what is awaited "
            "(head: request line and headers; body: the rest)",
            ["port", "stage"],
            registry=r,
        )
        self.limits = Gauge(
            "opamp_gateway_limit",
            "Configured bounds: max_connections, max_inflight, enrollment_rate (per s), enrollment_burst",
            ["limit"],
            registry=r,
        )
        self.client_timeouts = Counter(
            "opamp_gateway_client_timeouts_total",
            "Clients dropped for being slow or silent: header (HTTP request head past "
            "--header-timeout), body (HTTP request not fully arrived 1.5 x --read-timeout after its "
            "head), read (HTTP body), send (WebSocket peer not reading), idle (WebSocket silent past "
            "--idle-timeout)",
            ["kind"],
            registry=r,
        )
        for kind in ("header", "body", "read", "send", "idle"):
            self.client_timeouts.labels(kind=kind)

    def _connection_metrics(self, r: CollectorRegistry) -> None:
        self.connected_agents = Gauge(
            "opamp_gateway_connected_agents",
            "Agents connected to this node, by transport (http: polled this node within offline_after)",
            ["transport"],
            registry=r,
        )
        self.websocket_connections = Gauge(
            "opamp_gateway_websocket_connections", "Open WebSocket connections on this node", registry=r
        )
        self.websocket_closes = Counter(
            "opamp_gateway_websocket_closes_total",
            "WebSockets closed by the gateway, by close code",
            ["code"],
            registry=r,
        )
        self.bus_up = Gauge(
            "opamp_gateway_bus_up", "1 while the bus (Redis pub/sub) is connected", registry=r
        )
        self.bus_events = Counter(
            "opamp_gateway_bus_events_total",
            "Bus events sent to and received from other nodes, by type",
            ["direction", "event"],
            registry=r,
        )
        self.bus_lag = Histogram(
            "opamp_gateway_bus_lag_seconds",
            "Publish-to-receive delay of bus events (across nodes this includes clock skew)",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.pushes = Counter(
            "opamp_gateway_pushes_total",
            "Server-initiated messages, by kind and how they went: pushed over a socket here, published "
            "to the node holding the socket, or kept pending for the agent's next message",
            ["kind", "delivery"],
            registry=r,
        )
        self.duplicates = Counter(
            "opamp_gateway_duplicates_resolved_total",
            "Agents that arrived with an instance_uid a live agent holds, given a uid of their own",
            ["transport"],
            registry=r,
        )
        self.takeovers = Counter(
            "opamp_gateway_connection_takeovers_total",
            "Older connections dropped because the same instance_uid connected again (here or elsewhere)",
            ["scope"],
            registry=r,
        )
        self.configs = Gauge("opamp_gateway_configs", "Configs this node knows", registry=r)
        self.rollouts = Gauge(
            "opamp_gateway_rollouts",
            "Rollout records in the store by state, as this node's rollout controller last read them",
            ["state"],
            registry=r,
        )
        self.rollout_changes = Counter(
            "opamp_gateway_rollout_changes_total",
            "Rollout records this node wrote, by the state written: progressing (a start, a wave "
            "advance or a resume), paused, completed, halted (an automatic rollback), rolled_back",
            ["state"],
            registry=r,
        )
        self.package_rollouts = Gauge(
            "opamp_gateway_package_rollouts",
            "Package rollout records in the store by state, as this node's rollout controller last read them",
            ["state"],
            registry=r,
        )
        self.package_rollout_changes = Counter(
            "opamp_gateway_package_rollout_changes_total",
            "Package rollout records this node wrote, by the state written (as rollout_changes_total)",
            ["state"],
            registry=r,
        )
        self.packages = Gauge("opamp_gateway_packages", "Packages this node knows", registry=r)
        self.package_reports = Counter(
            "opamp_gateway_package_status_reports_total",
            "Per-package statuses in PackageStatuses reports that changed, by status (INSTALLED, "
            "INSTALL_PENDING, INSTALLING, INSTALL_FAILED, DOWNLOADING, unknown)",
            ["status"],
            registry=r,
        )
        self.config_reports = Counter(
            "opamp_gateway_remote_config_reports_total",
            "RemoteConfigStatus reports received, by status (APPLIED, APPLYING, FAILED, UNSET, unknown)",
            ["status"],
            registry=r,
        )
        self.draining = Gauge("opamp_gateway_draining", "1 while this node drains its WebSockets", registry=r)
        self.rebalance_closed = Counter(
            "opamp_gateway_rebalance_closed_total",
            "WebSockets closed to spread agents over the nodes (age: --max-connection-age; rebalance: "
            "POST /api/v1/rebalance)",
            ["reason"],
            registry=r,
        )
        self.drain_closed = Counter(
            "opamp_gateway_drain_closed_total", "WebSockets closed by a drain", registry=r
        )

    def _store_metrics(self, r: CollectorRegistry) -> None:
        self._es_request_children: dict[str, Counter] = {}
        self.circuit_state = Gauge(
            "opamp_gateway_store_circuit_state",
            "Store circuit breaker: 1 for the state it is in (closed, open, half_open), 0 for the others",
            ["state"],
            registry=r,
        )
        self.circuit_transitions = Counter(
            "opamp_gateway_store_circuit_transitions_total",
            "Times the store circuit breaker entered a state",
            ["state"],
            registry=r,
        )
        self.es_requests = Counter(
            "opamp_gateway_elasticsearch_requests_total",
            "Requests sent to Elasticsearch, by operation (mget, bulk, search, get, index, delete, ping)",
            ["operation"],
            registry=r,
        )
        self.es_bulk_actions = Histogram(
            "opamp_gateway_elasticsearch_bulk_actions",
            "Actions per _bulk request",
            buckets=(1, 10, 50, 100, 250, 500, 1000, 2500, 5000),
            registry=r,
        )
        self.es_rejected = Counter(
            "opamp_gateway_elasticsearch_rejected_documents_total",
            "Agent documents Elasticsearch refused for good (mapping errors); each is logged",
            registry=r,
        )
        self.es_oversized = Counter(
            "opamp_gateway_elasticsearch_oversized_documents_total",
            "Agent documents written without reported parts that would exceed the document size bound "
            "(named in the agent's `oversized`)",
            registry=r,
        )

    def observe_circuit(self, state: str) -> None:
        for name in ("closed", "open", "half_open"):
            self.circuit_state.labels(state=name).set(1 if name == state else 0)
        self.circuit_transitions.labels(state=state).inc()

    def observe_es_request(self, operation: str) -> None:
        child = self._es_request_children.get(operation)
        if child is None:
            child = self._es_request_children[operation] = self.es_requests.labels(operation=operation)
        child.inc()

    def observe_es_bulk(self, actions: int) -> None:
        self.es_bulk_actions.observe(actions)

    def observe_es_rejected(self) -> None:
        self.es_rejected.inc()

    def observe_es_oversized(self) -> None:
        self.es_oversized.inc()

    def watch_node(
        self,
        *,
        websocket_agents: Callable[[], float],
        http_agents: Callable[[], float],
        websocket_connections: Callable[[], float],
        bus_up: Callable[[], float],
    ) -> None:
        """Gauges read at scrape time from the node's live objects, through these functions."""
        self.connected_agents.labels(transport="websocket").set_function(websocket_agents)
        self.connected_agents.labels(transport="http").set_function(http_agents)
        self.websocket_connections.set_function(websocket_connections)
        self.bus_up.set_function(bus_up)

    def watch_limits(self, limits: Limits) -> None:
        self.inflight.set_function(lambda: limits.inflight)
        self.limits.labels(limit="max_connections").set(limits.max_connections)
        self.limits.labels(limit="max_inflight").set(limits.max_inflight)
        self.limits.labels(limit="enrollment_rate").set(limits.enrollments.rate)
        self.limits.labels(limit="enrollment_burst").set(limits.enrollments.burst)

    def watch_unfinished(self, port: str, heads: Callable[[], float], bodies: Callable[[], float]) -> None:
        self.unfinished.labels(port=port, stage="head").set_function(heads)
        self.unfinished.labels(port=port, stage="body").set_function(bodies)

    def key_mismatch(self, transport: str) -> None:
        self.key_mismatches.labels(transport=transport).inc()

    def credential_event(self, event: str) -> None:
        self.agent_credentials.labels(event=event).inc()

    def credential_file_failed(self, kind: str) -> None:
        self.credential_file_errors.labels(kind=kind).inc()

    def auth_failed(self, port: str) -> Callable[[str], None]:
        """A callback counting one refused request on `port` by reason."""

        def count(reason: str) -> None:
            self.auth_failures.labels(port=port, reason=reason).inc()

        return count

    def handled(self, transport: str, result: str, seconds: float) -> None:
        """Count one message and its latency (from the event loop only: hot_metrics.py)."""
        self.messages.inc((transport, result))
        self.latency.observe(transport, seconds)

    def set_build(self, backend: str) -> None:
        self.build.info({"version": __version__, "protobuf_backend": backend})

    def observe_outcome(self, outcome: Outcome) -> None:
        self.events.inc((outcome.event,))
        if outcome.event == "enrolled":
            self.enrollments.inc()
        elif outcome.event == "moved":
            self.uid_moves.inc()
        if outcome.reply.flags & 1:
            self.full_state_requests.inc()
        if outcome.reply.HasField("remote_config"):
            self._config_in_reply.inc()

    def config_reported(self, status: str) -> None:
        # An open enum: a value this gateway does not know is counted as "unknown", never as a
        # series of its own (an agent could otherwise make one per value).
        child = self._config_reports.get(status) or self._config_reports["unknown"]
        child.inc()

    def package_reported(self, status: str) -> None:
        """One package's status in a changed PackageStatuses (an unknown value: "unknown")."""
        known = ("INSTALLED", "INSTALL_PENDING", "INSTALLING", "INSTALL_FAILED", "DOWNLOADING")
        self.package_reports.labels(status=status if status in known else "unknown").inc()

    def observe_flush(self, size: int, seconds: float) -> None:
        self.flush_size.observe(size)
        self.flush_latency.observe(seconds)

    def observe_store_error(self, _exc: BaseException) -> None:
        self.store_errors.inc()

    def gc_callback(self) -> Callable[[str, dict[str, int]], None]:
        """A `gc.callbacks` entry timing each collection: with thousands of sockets, collections are
        a visible share of a node's CPU, and no profiler shows them as a frame of their own."""
        children = [self.gc_seconds.labels(generation=str(g)) for g in range(3)]
        started = [0.0]

        def on_gc(phase: str, info: dict[str, int]) -> None:
            if phase == "start":
                started[0] = time.perf_counter()
            else:
                children[info["generation"]].inc(time.perf_counter() - started[0])

        return on_gc
