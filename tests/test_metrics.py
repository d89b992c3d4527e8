"""/metrics after a scripted scenario: every counter moved by exactly what the scenario did, and every
name follows Prometheus conventions."""

from __future__ import annotations

import gc
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway import logs
from gateway.metrics import Metrics
from gateway.opamp import capabilities as caps
from gateway.proto import opamp_pb2 as pb
from tests.support.servers import run_node
from tests.support.waiting import uid
from tests.support.ws import agent_socket, exchange, heartbeat, report

pytestmark = pytest.mark.anyio

KEY = "metrics-agent-key-123"
TOKEN = "metrics-admin-token-456"
PROTOBUF = {"Content-Type": "application/x-protobuf"}
AGENT = {**PROTOBUF, "Authorization": f"Bearer {KEY}"}


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(text: str) -> tuple[Samples, dict[str, str]]:
    samples: Samples = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples, types


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


async def test_counters_after_a_scripted_scenario(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text(TOKEN)
    async with (
        run_node(
            tmp_path, agent_keys=KEY, admin_token_file=str(token), enrollment_rate=0.001, enrollment_burst=2
        ) as node,
        httpx2.AsyncClient(base_url=node.opamp_url) as agents,
        httpx2.AsyncClient(base_url=node.admin_url) as admin,
    ):
        # One HTTP agent enrolls, heartbeats once, then asks for a new uid (a move).
        assert (
            await agents.post("/v1/opamp", content=report(uid(1)).SerializeToString(), headers=AGENT)
        ).is_success
        assert (
            await agents.post("/v1/opamp", content=heartbeat(uid(1), 1).SerializeToString(), headers=AGENT)
        ).is_success
        move = pb.AgentToServer(instance_uid=uid(1), sequence_num=2, capabilities=caps.REPORTS_STATUS)
        move.flags = caps.REQUEST_INSTANCE_UID
        assert (await agents.post("/v1/opamp", content=move.SerializeToString(), headers=AGENT)).is_success
        # One WebSocket agent enrolls and stays connected.
        async with agent_socket(node.opamp_url, additional_headers={"Authorization": f"ApiKey {KEY}"}) as ws:
            assert not (await exchange(ws, report(uid(2)))).HasField("error_response")
            # The enrollment budget (2) is spent: a third agent is shed over each transport.
            shed = await agents.post("/v1/opamp", content=report(uid(3)).SerializeToString(), headers=AGENT)
            assert shed.status_code == 429
            assert (await exchange(ws, report(uid(4)))).HasField("error_response")
            # Refused at the door: no key, a wrong key, no admin token.
            assert (await agents.post("/v1/opamp", content=b"", headers=PROTOBUF)).status_code == 401
            wrong = {**PROTOBUF, "Authorization": "Bearer nope"}
            assert (await agents.post("/v1/opamp", content=b"", headers=wrong)).status_code == 401
            assert (await admin.get("/api/v1/agents")).status_code == 401
            await node.services.writer.flush()

            response = await admin.get("/metrics")
            assert response.status_code == 200, "metrics need no token"
            text = response.text
            samples, types = scrape(text)

    assert value(samples, "opamp_gateway_enrollments_total") == 2
    assert value(samples, "opamp_gateway_uid_moves_total") == 1
    assert value(samples, "opamp_gateway_messages_total", transport="http", result="200") == 3
    assert value(samples, "opamp_gateway_messages_total", transport="http", result="429") == 1
    assert value(samples, "opamp_gateway_messages_total", transport="websocket", result="ok") == 1
    assert value(samples, "opamp_gateway_messages_total", transport="websocket", result="unavailable") == 1
    assert value(samples, "opamp_gateway_message_duration_seconds_count", transport="http") == 4
    assert value(samples, "opamp_gateway_message_duration_seconds_count", transport="websocket") == 2
    assert value(samples, "opamp_gateway_shed_requests_total", reason="enrollment_rate") == 2
    assert value(samples, "opamp_gateway_shed_requests_total", reason="max_inflight") == 0
    assert ("opamp_gateway_shed_requests_total", frozenset({("reason", "max_connections")})) in samples
    assert value(samples, "opamp_gateway_auth_failures_total", port="opamp", reason="missing") == 1
    assert value(samples, "opamp_gateway_auth_failures_total", port="opamp", reason="invalid") == 1
    assert value(samples, "opamp_gateway_auth_failures_total", port="admin", reason="missing") == 1
    assert value(samples, "opamp_gateway_connected_agents", transport="websocket") == 1
    assert value(samples, "opamp_gateway_connected_agents", transport="http") == 1
    assert value(samples, "opamp_gateway_websocket_connections") == 1
    assert value(samples, "opamp_gateway_agent_events_total", event="heartbeat") == 1
    assert value(samples, "opamp_gateway_store_flush_size_count") >= 1
    assert value(samples, "opamp_gateway_store_flush_duration_seconds_count") >= 1
    assert value(samples, "opamp_gateway_store_errors_total") == 0
    assert value(samples, "opamp_gateway_writer_queue_depth") == 0
    assert value(samples, "opamp_gateway_bus_up") == 1
    assert value(samples, "opamp_gateway_inflight_messages") == 0
    assert value(samples, "opamp_gateway_limit", limit="enrollment_burst") == 2
    assert value(samples, "opamp_gateway_limit", limit="max_connections") == 10_000

    for name, kind in types.items():
        assert name.startswith("opamp_gateway_"), name
        if kind == "histogram" and ("duration" in name or "lag" in name):
            assert name.endswith("_seconds"), name
    declared = [line.split()[2:] for line in text.splitlines() if line.startswith("# TYPE ")]
    counters = [name for name, kind in declared if kind == "counter"]
    assert counters and all(name.endswith("_total") for name in counters), counters


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """logs.configure() rewires the gateway's loggers; give later tests (caplog) the defaults back."""
    names = ["gateway", "uvicorn", "uvicorn.error", "uvicorn.access"]
    saved = {
        n: (logging.getLogger(n).handlers[:], logging.getLogger(n).level, logging.getLogger(n).propagate)
        for n in names
    }
    try:
        yield
    finally:
        for n, (handlers, level, propagate) in saved.items():
            logger = logging.getLogger(n)
            logger.handlers[:] = handlers
            logger.setLevel(level)
            logger.propagate = propagate


@pytest.mark.usefixtures("restore_logging")
async def test_json_logs_carry_the_instance_uid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    logs.configure("info", "json")
    async with run_node(tmp_path) as node, httpx2.AsyncClient(base_url=node.opamp_url) as agents:
        response = await agents.post(
            "/v1/opamp", content=report(uid(7)).SerializeToString(), headers=PROTOBUF
        )
        assert response.status_code == 200
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert lines and all({"time", "level", "logger", "message"} <= set(line) for line in lines)
    enrolled = [line for line in lines if line["message"] == "agent enrolled"]
    assert enrolled == [
        {
            "time": enrolled[0]["time"],
            "level": "info",
            "logger": "gateway.transport.pipeline",
            "message": "agent enrolled",
            "instance_uid": "00000000-0000-0000-0000-000000000007",
        }
    ]


def test_every_shed_reason_the_transports_use_is_shown_from_the_start() -> None:
    # A store behind an open circuit sheds with "circuit_open" (transport/pipeline.py).
    registry = Metrics().registry
    for reason in ("store", "circuit_open", "writer_queue_full", "enrollment_rate", "draining"):
        assert registry.get_sample_value("opamp_gateway_shed_requests_total", {"reason": reason}) == 0.0


def test_gc_pauses_are_counted_by_generation() -> None:
    metrics = Metrics()
    on_gc = metrics.gc_callback()
    gc.callbacks.append(on_gc)
    try:
        gc.collect(1)
    finally:
        gc.callbacks.remove(on_gc)
    seconds = metrics.registry.get_sample_value("opamp_gateway_gc_seconds_total", {"generation": "1"})
    assert seconds is not None and seconds > 0
    assert metrics.registry.get_sample_value("opamp_gateway_gc_seconds_total", {"generation": "2"}) == 0


def test_unknown_config_statuses_share_one_series() -> None:
    """Issue 20, finding 7: each unknown remote_config_status value made a series of its own."""
    metrics = Metrics()
    for value in range(100, 150):
        metrics.config_reported(str(value))
    metrics.config_reported("APPLIED")
    registry = metrics.registry
    assert registry.get_sample_value("opamp_gateway_remote_config_reports_total", {"status": "unknown"}) == 50
    assert registry.get_sample_value("opamp_gateway_remote_config_reports_total", {"status": "APPLIED"}) == 1
    assert registry.get_sample_value("opamp_gateway_remote_config_reports_total", {"status": "100"}) is None
    statuses = {
        sample.labels["status"]
        for family in registry.collect()
        if family.name == "opamp_gateway_remote_config_reports"
        for sample in family.samples
    }
    assert statuses == {"UNSET", "APPLIED", "APPLYING", "FAILED", "unknown"}
