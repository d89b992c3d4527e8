"""What agents see when the store fails, on a node backed by Elasticsearch (the double): shed with a
jittered retry while the circuit is open or the write queue is full, and served again once it is
back. Readiness and metrics say which state the circuit is in."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx2
import pytest

from gateway.limits import RETRY_AFTER_SECONDS, RETRY_JITTER_SECONDS
from gateway.opamp import capabilities as caps
from gateway.proto import anyvalue_pb2 as av, opamp_pb2 as pb
from tests.support.es import EsAliases
from tests.support.servers import run_node
from tests.support.ws import agent_socket, exchange, heartbeat, report

pytestmark = pytest.mark.anyio

PROTOBUF = {"Content-Type": "application/x-protobuf"}


def _report(uid: bytes, seq: int = 0, healthy: bool = True) -> pb.AgentToServer:
    msg = pb.AgentToServer(instance_uid=uid, sequence_num=seq, capabilities=caps.REPORTS_STATUS)
    msg.agent_description.identifying_attributes.add(
        key="service.name", value=av.AnyValue(string_value="otelcol-contrib")
    )
    msg.health.healthy = healthy
    return msg


async def _post(http: httpx2.AsyncClient, msg: pb.AgentToServer) -> httpx2.Response:
    return await http.post("/v1/opamp", content=msg.SerializeToString(), headers=PROTOBUF)


async def _until(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met within the deadline")
        await asyncio.sleep(0.05)


def _assert_shed(response: httpx2.Response, reason: str) -> None:
    assert response.status_code == 503, response.text
    assert reason in response.text
    assert (
        RETRY_AFTER_SECONDS
        <= int(response.headers["retry-after"])
        <= RETRY_AFTER_SECONDS + RETRY_JITTER_SECONDS
    )


async def test_an_elasticsearch_outage_opens_the_circuit_until_it_is_back(
    tmp_path: Path, es_aliases: EsAliases
) -> None:
    double = es_aliases.double
    store = es_aliases.store(refresh=None)
    # The reset must outlast the steps that expect an open circuit, even on a loaded machine; a
    # shorter one lets a half-open probe answer "store" instead of "circuit_open".
    async with (
        run_node(tmp_path, store=store, store_breaker_failures=2, store_breaker_reset=3.0) as node,
        httpx2.AsyncClient(base_url=node.opamp_url) as http,
        httpx2.AsyncClient(base_url=node.admin_url) as admin,
        agent_socket(node.opamp_url) as ws,
    ):
        uid, ws_uid = uuid.uuid4().bytes, uuid.uuid4().bytes
        assert (await _post(http, _report(uid))).status_code == 200
        assert not (await exchange(ws, report(ws_uid))).HasField("error_response")
        double.down()
        try:
            first = await _post(http, _report(uid, 1))
            _assert_shed(first, "service unavailable: store")
            await _post(http, _report(uid, 2))
            # Open now: the store is not asked; the agent is told to come back later.
            _assert_shed(await _post(http, _report(uid, 3)), "service unavailable: circuit_open")
            # A WebSocket agent's durable change (health) is refused with Unavailable and retry_info.
            reply = await exchange(ws, _report(ws_uid, 1, healthy=False))
            assert reply.error_response.type == pb.ServerErrorResponseType_Unavailable
            assert "circuit_open" in reply.error_response.error_message
            retry = reply.error_response.retry_info.retry_after_nanoseconds / 1e9
            assert RETRY_AFTER_SECONDS <= retry <= RETRY_AFTER_SECONDS + RETRY_JITTER_SECONDS
            readiness = await admin.get("/readyz")
            assert readiness.status_code == 503
            assert readiness.json()["store_circuit"] in ("open", "half_open")
            assert "circuit open" in readiness.json()["problems"]["store"]
            metrics = (await admin.get("/metrics")).text
            assert 'opamp_gateway_shed_requests_total{reason="circuit_open"}' in metrics
            assert 'opamp_gateway_store_circuit_transitions_total{state="open"} 1.0' in metrics
        finally:
            double.up()

        async def ready() -> bool:
            # Each readiness check may be the half-open probe that closes the circuit.
            return (await admin.get("/readyz")).status_code == 200

        await _until(ready, timeout=20.0)
        assert (await admin.get("/readyz")).json()["store_circuit"] == "closed"
        metrics = (await admin.get("/metrics")).text
        assert 'opamp_gateway_store_circuit_state{state="closed"} 1.0' in metrics
        assert 'opamp_gateway_store_circuit_transitions_total{state="half_open"}' in metrics
        assert (await _post(http, _report(uid, 4))).status_code == 200
        await node.services.writer.flush()
        stored = await node.services.store.get(uid)
        assert stored is not None and stored.sequence_num == 4


async def test_a_full_write_queue_sheds_instead_of_growing(tmp_path: Path, es_aliases: EsAliases) -> None:
    """Elasticsearch keeps rejecting bulk items (429): writes pile up to --writer-queue-size, then
    agents are told to retry later; nothing is lost once Elasticsearch accepts writes again."""
    double = es_aliases.double
    store = es_aliases.store(refresh=None)
    fleet = [uuid.uuid4().bytes for _ in range(10)]
    async with (
        run_node(tmp_path, store=store, writer_queue_size=3, store_breaker_failures=10_000) as node,
        httpx2.AsyncClient(base_url=node.opamp_url) as http,
        agent_socket(node.opamp_url) as ws,
    ):
        ws_uid = uuid.uuid4().bytes
        assert not (await exchange(ws, report(ws_uid))).HasField("error_response")
        for uid in fleet:
            assert (await _post(http, _report(uid))).status_code == 200
        double.faults.reject_bulk_items = 10**9
        try:
            results = [await _post(http, pb.AgentToServer(instance_uid=uid, sequence_num=1)) for uid in fleet]
            accepted = [uid for uid, r in zip(fleet, results, strict=True) if r.status_code == 200]
            # At most the queue, plus the one batch the writer is retrying.
            assert 3 <= len(accepted) <= 6, [r.status_code for r in results]
            refused = [r for r in results if r.status_code != 200]
            for response in refused:
                _assert_shed(response, "service unavailable: writer_queue_full")
            writer = node.services.writer

            async def full() -> bool:
                return writer.depth >= 3

            await _until(full)
            # A WebSocket heartbeat needs no write (its liveness stays in memory): answered as usual.
            reply = await exchange(ws, heartbeat(ws_uid, 1))
            assert not reply.HasField("error_response")
            # A message that changes the record needs the writer: shed.
            unhealthy = report(ws_uid, 2, name="otelcol-contrib")
            unhealthy.health.healthy = False
            reply = await exchange(ws, unhealthy)
            assert reply.error_response.type == pb.ServerErrorResponseType_Unavailable
            assert "writer_queue_full" in reply.error_response.error_message
            assert reply.error_response.retry_info.retry_after_nanoseconds > 0
            assert writer.depth >= 3
        finally:
            double.faults.reject_bulk_items = 0

        async def flushed() -> bool:
            states = [await node.services.store.get(uid) for uid in accepted]
            return all(s is not None and s.sequence_num == 1 for s in states)

        await _until(flushed, timeout=15.0)
        late = next(uid for uid in fleet if uid not in accepted)
        assert (await _post(http, pb.AgentToServer(instance_uid=late, sequence_num=1))).status_code == 200
