"""What the node's servers add around the apps: the admin port wakes the loop pacer."""

from __future__ import annotations

from pathlib import Path

import httpx2
import pytest

from gateway.proto import opamp_pb2 as pb
from tests.support.servers import run_node
from tests.support.waiting import uid

pytestmark = pytest.mark.anyio


async def test_every_admin_request_wakes_the_pacer_and_an_opamp_message_does_not(tmp_path: Path) -> None:
    woken: list[None] = []
    async with run_node(tmp_path, wake=lambda: woken.append(None)) as node, httpx2.AsyncClient() as client:
        heartbeat = pb.AgentToServer(instance_uid=uid(1), sequence_num=0, capabilities=1)
        answer = await client.post(
            f"{node.opamp_url}/v1/opamp",
            content=heartbeat.SerializeToString(),
            headers={"Content-Type": "application/x-protobuf"},
        )
        assert answer.status_code == 200
        assert woken == []
        for _ in range(2):
            assert (await client.get(f"{node.admin_url}/healthz")).status_code == 200
        assert len(woken) == 2
