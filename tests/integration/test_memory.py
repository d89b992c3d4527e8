"""Memory no single agent can grow (issue 20, finding 4): a real gateway process, its RSS measured
while one agent sends a new huge agent_description with every message."""

from __future__ import annotations

import uuid
from pathlib import Path

import httpx2

from gateway.proto import anyvalue_pb2 as av, opamp_pb2 as pb
from tests.support.process import GatewayFactory

PROTOBUF = {"Content-Type": "application/x-protobuf"}
UID = bytes(range(16))
_MIB = 1024 * 1024


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS line")


def _description(filler: bytes) -> pb.AgentDescription:
    desc = pb.AgentDescription()
    desc.identifying_attributes.add(key="service.name", value=av.AnyValue(string_value="otelcol"))
    desc.non_identifying_attributes.add(key="filler", value=av.AnyValue(bytes_value=filler))
    return desc


def _post(client: httpx2.Client, url: str, msg: pb.AgentToServer) -> pb.ServerToAgent:
    response = client.post(url, content=msg.SerializeToString(), headers=PROTOBUF)
    assert response.status_code == 200, response.text
    return pb.ServerToAgent.FromString(response.content)


def test_new_huge_descriptions_do_not_grow_the_node(gateway_factory: GatewayFactory) -> None:
    gw = gateway_factory()
    gw.admin.put_config(
        "base",
        {"selector": {"match": {"service.name": "otelcol"}}, "files": {"c.yaml": {"body": "a: 1\n"}}},
    )
    with httpx2.Client(headers=gw.agent_headers, timeout=30) as client:
        first = _post(
            client,
            gw.opamp_url,
            pb.AgentToServer(instance_uid=UID, sequence_num=0, agent_description=_description(b"ok")),
        )
        assert not first.HasField("error_response")
        before = _rss_bytes(gw.pid)
        sent = 0
        for seq in range(1, 31):
            # A new 4 MiB description each time: on main every one was kept in the desired-config
            # cache (bounded by count only), 120 MiB in all.
            filler = seq.to_bytes(4, "big") * _MIB
            reply = _post(
                client,
                gw.opamp_url,
                pb.AgentToServer(instance_uid=UID, sequence_num=seq, agent_description=_description(filler)),
            )
            sent += len(filler)
            assert reply.error_response.type == pb.ServerErrorResponseType_BadRequest
            assert "agent_description" in reply.error_response.error_message
        growth = _rss_bytes(gw.pid) - before
    assert growth < sent // 4, f"RSS grew {growth} bytes for {sent} bytes of descriptions"
    record = gw.admin.agent(str(uuid.UUID(bytes=UID)))
    assert record is not None
    # The agent keeps its old record.
    assert "filler" in str(record["description"]) and "otelcol" in str(record["description"])
