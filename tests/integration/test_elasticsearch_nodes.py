"""Real gateway processes on one Elasticsearch (the wire-level double, or OPAMP_GATEWAY_TEST_ES_URL):
stateless nodes, any node answers any agent, and `serve` waits for `migrate`."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import httpx2

from gateway.opamp import capabilities as caps
from gateway.proto import anyvalue_pb2 as av, opamp_pb2 as pb
from harness.gateway import start_gateway
from harness.waiting import wait_until
from tests.support.es import EsAliases, new_aliases, run_sync
from tests.support.process import Gateway, GatewayFactory

PROTOBUF = {"Content-Type": "application/x-protobuf"}


def _post(client: httpx2.Client, url: str, msg: pb.AgentToServer) -> pb.ServerToAgent:
    response = client.post(url, content=msg.SerializeToString(), headers=PROTOBUF)
    assert response.status_code == 200, response.text
    return pb.ServerToAgent.FromString(response.content)


def _stored_seq(node: Gateway, uid: str, seq: int) -> Callable[[], bool | None]:
    """A check that the store (a realtime GET through the node's admin API) holds `seq`."""

    def check() -> bool | None:
        agent = node.admin.agent(uid)
        return (agent is not None and agent["sequence_num"] == seq) or None

    return check


def test_any_node_answers_any_agent(gateway_factory: GatewayFactory, es_aliases: EsAliases) -> None:
    def start() -> Gateway:
        return gateway_factory(
            elasticsearch_url=es_aliases.url,
            elasticsearch_agents_alias=es_aliases.agents,
            elasticsearch_configs_alias=es_aliases.configs,
            flush_interval=0.1,
        )

    a, b = start(), start()
    raw = uuid.uuid4().bytes
    uid = str(uuid.UUID(bytes=raw))
    first = pb.AgentToServer(instance_uid=raw, capabilities=caps.REPORTS_STATUS | caps.REPORTS_HEALTH)
    first.agent_description.identifying_attributes.add(
        key="service.name", value=av.AnyValue(string_value="otelcol-contrib")
    )
    first.health.healthy = True
    with httpx2.Client(timeout=10, trust_env=False) as client:
        assert _post(client, a.opamp_url, first).flags == 0
        # Enrollment is durable before the reply: node B reads it at once (a realtime GET).
        assert b.admin.agent(uid) is not None
        for seq in range(1, 9):
            node = (a, b)[seq % 2]
            beat = pb.AgentToServer(instance_uid=raw, sequence_num=seq, capabilities=first.capabilities)
            assert _post(client, node.opamp_url, beat).flags == 0, f"false gap at sequence_num {seq}"
            wait_until(_stored_seq((b, a)[seq % 2], uid, seq), 5, f"sequence_num {seq} in Elasticsearch")
        bye = pb.AgentToServer(instance_uid=raw, sequence_num=9, capabilities=first.capabilities)
        bye.agent_disconnect.SetInParent()
        _post(client, b.opamp_url, bye)
    for node in (a, b):
        agent = node.admin.agent(uid)
        assert agent is not None and agent["status"] == "disconnected" and agent["sequence_num"] == 9
    # The inventory is a search: it shows the agent once the index has refreshed (1 s here).
    found = wait_until(lambda: a.admin.find_one(q=uid), 10, "the agent in a search")
    assert found["instance_uid"] == uid

    def disconnected() -> dict[str, object] | None:
        summary = b.admin.summary()
        return summary if summary["by_status"]["disconnected"] == 1 else None

    summary = wait_until(disconnected, 10, "the disconnect in the summary")
    assert summary["total"] == 1
    assert summary["by_type_version"] == {"otelcol-contrib": {"unknown": 1}}


def test_serve_is_unready_until_migrate_has_run(tmp_path: Path, es_aliases: EsAliases) -> None:
    aliases = new_aliases(es_aliases.target)
    node = start_gateway(tmp_path, "unmigrated", aliases.flags(), ready=None)
    try:
        with httpx2.Client(base_url=node.admin_url, timeout=5, trust_env=False) as client:

            def answered() -> httpx2.Response | None:
                try:
                    return client.get("/readyz")
                except httpx2.TransportError:
                    return None

            response = wait_until(answered, 20, "the node to answer /readyz")
            assert response.status_code == 503
            assert "run `opamp-gateway migrate`" in response.json()["problems"]["store"]
            assert "run `opamp-gateway migrate`" in node.log_text()
            run_sync(aliases.migrate)

            def ready() -> bool:
                response = answered()
                return response is not None and response.status_code == 200

            wait_until(ready, 30, "readiness after migrate")
    finally:
        node.stop_cleanly(timeout=20)
        run_sync(aliases.drop)
