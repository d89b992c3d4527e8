"""Duplicate instance_uids over plain HTTP: two agents polling with one uid are told apart by a
sequence_num that goes back together with another description; a restart is not a duplicate."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import pytest

from gateway.fleet.agent import AgentState
from gateway.node import duplicates
from gateway.proto import opamp_pb2 as pb
from tests.support.memory_store import MemoryStore
from tests.support.opamp_http import poll
from tests.support.servers import Node, run_node
from tests.support.waiting import uid
from tests.support.ws import heartbeat, report

pytestmark = pytest.mark.anyio


@pytest.fixture
async def node(tmp_path: Path) -> AsyncIterator[Node]:
    async with run_node(tmp_path, store=MemoryStore()) as running:
        yield running


@pytest.fixture
async def client(node: Node) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(base_url=node.opamp_url) as c:
        yield c


async def test_interleaved_sequence_numbers_with_another_description_are_a_clone(
    node: Node, client: httpx2.AsyncClient
) -> None:
    for seq in range(4):
        await poll(client, "/v1/opamp", report(uid(1), seq, name="first"))
    # The clone's numbers run behind the first agent's; its full report names another agent.
    reply = await poll(client, "/v1/opamp", report(uid(1), 2, name="second"))
    new_uid = reply.agent_identification.new_instance_uid
    assert len(new_uid) == 16 and new_uid != uid(1) and not reply.HasField("error_response")
    # The first keeps its uid and its record, in step; the clone goes on under its new uid.
    assert not (await poll(client, "/v1/opamp", heartbeat(uid(1), 4))).HasField("agent_identification")
    assert (await poll(client, "/v1/opamp", heartbeat(new_uid, 3))).instance_uid == new_uid
    async with httpx2.AsyncClient(base_url=node.admin_url) as admin:
        clone = (await admin.get(f"/api/v1/agents/{uuid.UUID(bytes=new_uid)}")).json()
        first = (await admin.get(f"/api/v1/agents/{uuid.UUID(bytes=uid(1))}")).json()
        metrics = (await admin.get("/metrics")).text
    assert clone["duplicate_of"] == str(uuid.UUID(bytes=uid(1))) and first["duplicate_of"] is None
    assert first["sequence_num"] == 4
    assert 'opamp_gateway_duplicates_resolved_total{transport="http"} 1.0' in metrics


@pytest.mark.parametrize(
    ("seq", "name"),
    [
        (0, "first"),  # a restart: sequence_num back to 0, same description
        (0, "upgraded"),  # a restart with a new description
        (2, "first"),  # a replayed or reordered poll from the same agent
        (9, "other"),  # a description change in step
    ],
)
async def test_no_clone_without_both_signs(client: httpx2.AsyncClient, seq: int, name: str) -> None:
    for n in range(4):
        await poll(client, "/v1/opamp", report(uid(2), n, name="first"))
    reply = await poll(client, "/v1/opamp", report(uid(2), seq, name=name))
    assert not reply.HasField("agent_identification") and reply.instance_uid == uid(2)


def test_http_clone_needs_a_known_record_with_a_description() -> None:
    msg = report(uid(3), 1)
    assert not duplicates.http_clone(None, msg)
    bare = AgentState(instance_uid=uid(3), enrolled_at=0.0, last_seen=0.0, sequence_num=5)
    assert not duplicates.http_clone(bare, msg)
    assert not duplicates.http_clone(bare, pb.AgentToServer(instance_uid=uid(3), sequence_num=1))


async def test_available_components_are_asked_for_stored_and_shown(
    node: Node, client: httpx2.AsyncClient
) -> None:
    capabilities = report(uid(5)).capabilities | pb.AgentCapabilities_ReportsAvailableComponents
    first = report(uid(5), 0, capabilities=capabilities)
    first.available_components.hash = b"h1"
    reply = await poll(client, "/v1/opamp", first)
    assert reply.flags & pb.ServerToAgentFlags_ReportAvailableComponents
    details = heartbeat(uid(5), 1, capabilities=capabilities)
    details.available_components.hash = b"h1"
    details.available_components.components["receivers"].sub_component_map["otlp"].SetInParent()
    reply = await poll(client, "/v1/opamp", details)
    assert not reply.flags & pb.ServerToAgentFlags_ReportAvailableComponents
    async with httpx2.AsyncClient(base_url=node.admin_url) as admin:
        shown = (await admin.get(f"/api/v1/agents/{uuid.UUID(bytes=uid(5))}")).json()
    assert shown["available_components"] == {
        "hash": b"h1".hex(),
        "components": {
            "receivers": {"metadata": {}, "components": {"otlp": {"metadata": {}, "components": {}}}}
        },
    }
