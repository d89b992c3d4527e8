"""Several gateway processes on one host share one SQLite file; any node answers any poll."""

from __future__ import annotations

import sqlite3
import time
import uuid
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import httpx2

from gateway.opamp import capabilities as caps
from gateway.proto import anyvalue_pb2 as av, opamp_pb2 as pb
from harness.waiting import wait_until
from tests.support.process import Gateway, GatewayFactory

PROTOBUF = {"Content-Type": "application/x-protobuf"}


def _post(client: httpx2.Client, url: str, msg: pb.AgentToServer) -> pb.ServerToAgent:
    response = client.post(url, content=msg.SerializeToString(), headers=PROTOBUF)
    assert response.status_code == 200, response.text
    return pb.ServerToAgent.FromString(response.content)


def test_an_http_agent_alternating_between_nodes(gateway_factory: GatewayFactory, tmp_path: Path) -> None:
    shared = tmp_path / "shared.db"
    a = gateway_factory(sqlite_path=shared, flush_interval=0.2)
    b = gateway_factory(sqlite_path=shared, flush_interval=0.2)
    uid = uuid.uuid4().bytes
    first = pb.AgentToServer(instance_uid=uid, capabilities=caps.REPORTS_STATUS)
    first.agent_description.identifying_attributes.add(
        key="service.name", value=av.AnyValue(string_value="otelcol-contrib")
    )
    with httpx2.Client(timeout=5) as client:
        assert _post(client, a.opamp_url, first).flags == 0
        # Enrollment is durable before the reply, so node B knows the agent at once.
        assert b.admin.agent(str(uuid.UUID(bytes=uid))) is not None
        for seq in range(1, 11):
            node = (a, b)[seq % 2]
            hb = pb.AgentToServer(instance_uid=uid, sequence_num=seq, capabilities=caps.REPORTS_STATUS)
            # The other node committed the previous heartbeat, so this node sees no gap.
            assert _post(client, node.opamp_url, hb).flags == 0, f"false gap at sequence_num {seq}"
            wait_until(_on_disk(b, uid, seq), 5, f"sequence_num {seq} on disk")
        bye = pb.AgentToServer(instance_uid=uid, sequence_num=11, capabilities=caps.REPORTS_STATUS)
        bye.agent_disconnect.SetInParent()
        _post(client, a.opamp_url, bye)
    for node in (a, b):
        agent = node.admin.agent(str(uuid.UUID(bytes=uid)))
        assert agent is not None
        assert agent["status"] == "disconnected" and agent["sequence_num"] == 11
        assert agent["description"]["identifying_attributes"] == {"service.name": "otelcol-contrib"}
    assert a.admin.summary()["total"] == 1


def _on_disk(node: Gateway, uid: bytes, seq: int) -> Callable[[], bool | None]:
    """A check that the store (not a node's pending writes) holds `seq` for the agent."""

    def check() -> bool | None:
        agents = node.admin.agents(q=str(uuid.UUID(bytes=uid)))
        return (bool(agents) and agents[0]["sequence_num"] == seq) or None

    return check


def _report(uid: bytes, seq: int, caps_: int) -> pb.AgentToServer:
    msg = pb.AgentToServer(instance_uid=uid, sequence_num=seq, capabilities=caps_)
    msg.agent_description.identifying_attributes.add(
        key="service.name", value=av.AnyValue(string_value="otelcol-contrib")
    )
    msg.health.healthy = True
    return msg


def test_what_one_node_stores_reaches_the_node_that_cached_the_agent(
    gateway_factory: GatewayFactory, tmp_path: Path
) -> None:
    # Node A keeps the rows of the HTTP agents it serves and reads only their rev on each poll; a
    # command requested on node B and a health change reported through B must not be hidden by, or
    # overwritten from, A's copy.
    shared = tmp_path / "shared.db"
    a = gateway_factory(sqlite_path=shared, flush_interval=0.1)
    b = gateway_factory(sqlite_path=shared, flush_interval=0.1)
    uid = uuid.uuid4().bytes
    text = str(uuid.UUID(bytes=uid))
    agent_caps = caps.REPORTS_STATUS | caps.REPORTS_HEALTH | caps.ACCEPTS_RESTART_COMMAND
    with httpx2.Client(timeout=5) as client:
        assert _post(client, a.opamp_url, _report(uid, 0, agent_caps)).flags == 0
        seq = 0
        # A few heartbeats on A, each flushed: A's copy is now its own touches, never re-read.
        for _ in range(3):
            seq += 1
            _post(client, a.opamp_url, pb.AgentToServer(instance_uid=uid, sequence_num=seq))
            wait_until(_on_disk(b, uid, seq), 5, f"sequence_num {seq} on disk")

        restart = client.post(f"{b.admin_url}/api/v1/agents/{text}/restart")
        assert restart.status_code in (200, 202), restart.text
        seq += 1
        reply = _post(client, a.opamp_url, pb.AgentToServer(instance_uid=uid, sequence_num=seq))
        assert reply.command.type == pb.CommandType_Restart, "A answered from a copy without the command"

        seq += 1
        sick = pb.AgentToServer(instance_uid=uid, sequence_num=seq)
        sick.health.healthy = False
        sick.health.last_error = "exporter down"
        assert _post(client, b.opamp_url, sick).flags == 0
        # A heartbeat, then a report of something else, both through A: neither may bring back the
        # health A's copy had.
        seq += 1
        assert _post(client, a.opamp_url, pb.AgentToServer(instance_uid=uid, sequence_num=seq)).flags == 0
        seq += 1
        effective = pb.AgentToServer(instance_uid=uid, sequence_num=seq)
        effective.effective_config.config_map.config_map["c.yaml"].body = b"receivers: {}\n"
        assert _post(client, a.opamp_url, effective).flags == 0
        wait_until(_on_disk(b, uid, seq), 5, f"sequence_num {seq} on disk")
    for node in (a, b):
        agent = node.admin.agent(text)
        assert agent is not None
        assert agent["health"] is not None and agent["health"]["healthy"] is False, node.admin_url
        assert agent["status"] == "unhealthy"
        assert agent["effective_config"] is not None


def _stored_seq(path: Path, uid: bytes) -> int | None:
    """The sequence_num the file holds for the agent, read with no gateway in between."""
    with closing(sqlite3.connect(path)) as conn:
        row = conn.execute("SELECT sequence_num FROM agents WHERE uid = ?", (uid,)).fetchone()
    return None if row is None else int(row[0])


def test_a_node_alone_holds_http_heartbeats_until_another_node_opens_the_file(
    gateway_factory: GatewayFactory, tmp_path: Path
) -> None:
    shared = tmp_path / "shared.db"
    a = gateway_factory(sqlite_path=shared, flush_interval=0.1)
    uid = uuid.uuid4().bytes
    with httpx2.Client(timeout=5) as client:
        assert _post(client, a.opamp_url, _report(uid, 0, caps.REPORTS_STATUS)).flags == 0
        for seq in (1, 2, 3):
            assert _post(client, a.opamp_url, pb.AgentToServer(instance_uid=uid, sequence_num=seq)).flags == 0
        # Alone on its file and without a bus, node A keeps the heartbeats in memory...
        time.sleep(0.5)
        assert _stored_seq(shared, uid) == 0
        assert "opamp_gateway_writer_held_heartbeats 1.0" in client.get(f"{a.admin_url}/metrics").text
        # ... until another gateway opens the file: then it writes them at once, and every poll after.
        b = gateway_factory(sqlite_path=shared, flush_interval=0.1)
        wait_until(lambda: _stored_seq(shared, uid) == 3 or None, 5, "sequence_num 3 on disk")
        assert _post(client, b.opamp_url, pb.AgentToServer(instance_uid=uid, sequence_num=4)).flags == 0
        # (B's write is batched: within its flush interval the file may still say 3, see
        # test_an_http_agent_alternating_between_nodes.)
        wait_until(lambda: _stored_seq(shared, uid) == 4 or None, 5, "sequence_num 4 on disk")
        assert _post(client, a.opamp_url, pb.AgentToServer(instance_uid=uid, sequence_num=5)).flags == 0
        wait_until(lambda: _stored_seq(shared, uid) == 5 or None, 5, "sequence_num 5 on disk")
