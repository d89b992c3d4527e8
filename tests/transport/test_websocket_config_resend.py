"""Remote config resend rules over a real WebSocket (issue 14): an agent that never reports on its
config gets each config once, not on every reconnect; one that reports gets it again on a new
connection when it has not reported."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import pytest

from gateway.opamp import capabilities as caps
from gateway.proto import opamp_pb2 as pb
from tests.support.memory_store import MemoryStore
from tests.support.servers import Node, run_node
from tests.support.waiting import uid
from tests.support.ws import agent_socket, exchange, heartbeat, report

pytestmark = pytest.mark.anyio

SILENT = caps.REPORTS_STATUS | caps.ACCEPTS_REMOTE_CONFIG
REPORTING = SILENT | caps.REPORTS_REMOTE_CONFIG
CONFIG = {
    "selector": {"match": {"service.name": "otelcol-contrib"}},
    "files": {"collector.yaml": {"content_type": "text/yaml", "body": "receivers: {}\n"}},
}


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    async with run_node(tmp_path, store=MemoryStore()) as running:
        async with httpx2.AsyncClient(base_url=running.admin_url) as admin:
            assert (await admin.put("/api/v1/configs/base", json=CONFIG)).status_code == 201
        yield running


async def test_no_resend_on_reconnect_to_an_agent_without_reports_remote_config(node: Node) -> None:
    async with agent_socket(node.opamp_url) as ws:
        first = await exchange(ws, report(uid(1), 0, SILENT))
        assert first.HasField("remote_config")
    for seq in (1, 2, 3):
        async with agent_socket(node.opamp_url) as ws:
            again = await exchange(ws, heartbeat(uid(1), seq, SILENT))
            assert not again.HasField("remote_config") and again.flags == 0


async def test_an_agent_that_reports_gets_an_unanswered_offer_on_a_new_connection(node: Node) -> None:
    start = report(uid(2), 0, REPORTING)
    start.remote_config_status.status = pb.RemoteConfigStatuses_UNSET
    async with agent_socket(node.opamp_url) as ws:
        digest = (await exchange(ws, start)).remote_config.config_hash
        assert digest
    async with agent_socket(node.opamp_url) as ws:
        assert (await exchange(ws, heartbeat(uid(2), 1, REPORTING))).remote_config.config_hash == digest
        applied = heartbeat(uid(2), 2, REPORTING)
        applied.remote_config_status.last_remote_config_hash = digest
        applied.remote_config_status.status = pb.RemoteConfigStatuses_APPLIED
        assert not (await exchange(ws, applied)).HasField("remote_config")
    async with agent_socket(node.opamp_url) as ws:
        assert not (await exchange(ws, heartbeat(uid(2), 3, REPORTING))).HasField("remote_config")


async def test_failed_then_a_changed_report_over_a_socket(node: Node) -> None:
    start = report(uid(3), 0, REPORTING)
    start.remote_config_status.status = pb.RemoteConfigStatuses_UNSET
    async with agent_socket(node.opamp_url) as ws:
        digest = (await exchange(ws, start)).remote_config.config_hash
        failed = heartbeat(uid(3), 1, REPORTING)
        failed.remote_config_status.last_remote_config_hash = b"old"
        failed.remote_config_status.status = pb.RemoteConfigStatuses_FAILED
        assert not (await exchange(ws, failed)).HasField("remote_config")
        assert not (await exchange(ws, heartbeat(uid(3), 2, REPORTING))).HasField("remote_config")
        restarted = heartbeat(uid(3), 3, REPORTING)
        restarted.remote_config_status.last_remote_config_hash = b"old"
        restarted.remote_config_status.status = pb.RemoteConfigStatuses_APPLIED
        assert (await exchange(ws, restarted)).remote_config.config_hash == digest


async def test_a_first_report_without_config_status_is_asked_before_an_offer(node: Node) -> None:
    async with agent_socket(node.opamp_url) as ws:
        first = await exchange(ws, report(uid(4), 0, REPORTING))
        assert first.flags & caps.REPORT_FULL_STATE and not first.HasField("remote_config")
        full = report(uid(4), 1, REPORTING)
        full.remote_config_status.status = pb.RemoteConfigStatuses_UNSET
        second = await exchange(ws, full)
        assert second.flags == 0 and second.HasField("remote_config")
