"""The npm OpAMP client (@elastic/opamp-client-node 0.5.0) against a real gateway process.

tests/interop/node/agent.js runs the client and prints its diagnostics_channel events as JSON lines;
the tests read them and the admin API. What this client does differently (peers.md A2):
- it accepts a reply only if Content-Type is exactly `application/x-protobuf` and the status is
  200; anything else is a `send.fail` followed by a 30 s backoff, so "no send.fail" is the check;
- it ignores a reply whose instance_uid is not its own;
- `shutdown()` sends no AgentDisconnect: the gateway can only notice that heartbeats stopped;
- it never sets AgentToServer.flags, so it cannot send RequestInstanceUid (opamp-client.js builds
  every message from instanceUid, capabilities and sequenceNum only). It does adopt a
  `new_instance_uid` from any reply, which the gateway sends to an agent still using a uid the
  gateway has moved: the test triggers that move with a RequestInstanceUid of its own.
- remote config: it supports AcceptsRemoteConfig and ReportsRemoteConfig (no other optional
  capability). A reply's remote_config goes to the `onMessage({remoteConfig})` callback, only if the
  client has AcceptsRemoteConfig; the application reports with `setRemoteConfigStatus({
  lastRemoteConfigHash, status, errorMessage})`, which sends a message soon (~30 ms) if the status
  changed. agent.js does both, and prints each config it is handed.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from opentelemetry._opamp.proto import opamp_pb2 as pb

from gateway.opamp import capabilities as caps
from tests.support.process import Gateway, GatewayFactory
from tests.support.remote_config import applied_config, config_spec, expected_hash, service_in

pytestmark = pytest.mark.interop

NODE_DIR = Path(__file__).resolve().parent / "node"
CLIENT_PACKAGE = NODE_DIR / "node_modules" / "@elastic" / "opamp-client-node" / "package.json"
CLIENT_VERSION = "0.5.0"
HEARTBEAT_SECONDS = 0.5
OFFLINE_AFTER = 2.0
SUCCESS = "opamp-client.send.success"
FAIL = "opamp-client.send.fail"
Event = dict[str, Any]


@pytest.fixture(scope="module")
def node() -> str:
    path = shutil.which("node")
    if path is None:
        pytest.skip("`node` is not installed (scripts/install-test-deps.sh installs it)")
    if not CLIENT_PACKAGE.exists():
        pytest.fail(
            f"{CLIENT_PACKAGE.relative_to(NODE_DIR.parent.parent.parent)} is missing: "
            "run scripts/install-test-deps.sh (or `npm ci --prefix tests/interop/node`)",
            pytrace=False,
        )
    installed = json.loads(CLIENT_PACKAGE.read_text())["version"]
    if installed != CLIENT_VERSION:
        pytest.fail(
            f"tests/interop/node has @elastic/opamp-client-node {installed}, the lock pins {CLIENT_VERSION}: "
            "run scripts/install-test-deps.sh",
            pytrace=False,
        )
    return path


class NodeAgent:
    """One agent.js process; its stdout events are collected by a reader thread."""

    def __init__(self, node: str, config: dict[str, Any], stderr_path: Path) -> None:
        self._stderr_file = stderr_path.open("wb")
        self.stderr_path = stderr_path
        self.process = subprocess.Popen(
            [node, str(NODE_DIR / "agent.js"), json.dumps(config)],
            cwd=NODE_DIR,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr_file,
        )
        self._events: list[Event] = []
        self._garbage: list[str] = []
        self._changed = threading.Condition()
        self._reader = threading.Thread(target=self._read, name="node-agent-stdout", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.decode(errors="replace").strip()
            with self._changed:
                try:
                    self._events.append(json.loads(line))
                except ValueError:
                    self._garbage.append(line)
                self._changed.notify_all()

    def events(self, name: str | None = None) -> list[Event]:
        with self._changed:
            return [e for e in self._events if name is None or e.get("name") == name]

    def wait_for(self, check: Callable[[list[Event]], bool], timeout: float, what: str) -> list[Event]:
        with self._changed:
            if not self._changed.wait_for(
                lambda: check(self._events) or self.process.poll() is not None, timeout
            ):
                raise AssertionError(
                    f"timed out after {timeout}s waiting for {what}; events: {self._events}\n"
                    f"agent.js stderr:\n{self.stderr()}"
                )
            if not check(self._events):
                raise AssertionError(
                    f"agent.js exited ({self.process.returncode}) before {what}:\n{self.stderr()}"
                )
            return list(self._events)

    def successes(self) -> list[Event]:
        return self.events(SUCCESS)

    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def shutdown(self, timeout: float = 10) -> int:
        """Ask agent.js to call client.shutdown() and wait until the process ends by itself."""
        assert self.process.stdin is not None
        self.process.stdin.write(b"shutdown\n")
        self.process.stdin.close()
        try:
            code = self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"agent.js did not exit within {timeout}s of shutdown:\n{self.stderr()}"
            ) from None
        self._reader.join(timeout=5)
        assert self._garbage == [], f"agent.js printed non-JSON lines: {self._garbage}"
        return code

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()
        self._stderr_file.close()


NodeAgentFactory = Callable[..., NodeAgent]


@pytest.fixture
def node_agent(node: str, tmp_path: Path) -> Iterator[NodeAgentFactory]:
    """`node_agent(gateway, **config) -> NodeAgent`, config as agent.js takes it (camelCase)."""
    started: list[NodeAgent] = []

    def start(gateway: Gateway, **config: Any) -> NodeAgent:
        config = {
            "endpoint": gateway.opamp_url,
            "heartbeatIntervalSeconds": HEARTBEAT_SECONDS,
            "headers": gateway.agent_headers,
            **config,
        }
        agent = NodeAgent(node, config, tmp_path / f"node-agent-{len(started) + 1}.stderr")
        started.append(agent)
        return agent

    yield start
    for agent in started:
        agent.kill()


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def started_uid(agent: NodeAgent) -> str:
    events = agent.wait_for(lambda es: any(e["name"] == "started" for e in es), 10, "agent.js to start")
    uid: str = next(e for e in events if e["name"] == "started")["instanceUidStr"]
    return uid


def wait_for_successes(agent: NodeAgent, count: int, timeout: float, uid: str | None = None) -> list[Event]:
    """Wait until `count` sends succeeded (with instance_uid `uid`, if given); fail at once on a send.fail."""

    def enough(events: list[Event]) -> bool:
        failures = [e for e in events if e["name"] == FAIL]
        assert failures == [], f"the client failed to send: {failures}"
        ok = [e for e in events if e["name"] == SUCCESS and (uid is None or e["a2s"]["instanceUid"] == uid)]
        return len(ok) >= count

    agent.wait_for(enough, timeout, f"{count} successful sends" + (f" as {uid}" if uid else ""))
    return agent.successes()


def test_enroll_heartbeat_then_offline(gateway_factory: GatewayFactory, node_agent: NodeAgentFactory) -> None:
    # Offline after 3 missed heartbeats of 1 s, or --offline-after if longer (the agent is offered no
    # interval: it lacks AcceptsOpAMPConnectionSettings).
    gateway = gateway_factory(offline_after=OFFLINE_AFTER, agent_heartbeat_interval=1)
    name = unique_name("node-interop")
    agent = node_agent(
        gateway,
        capabilities=["AcceptsRemoteConfig", "ReportsRemoteConfig"],
        identifyingAttributes={"service.name": name, "service.version": "0.5.0-interop"},
        nonIdentifyingAttributes={
            "os.type": "linux",
            "host.name": "node-host",
            "process.runtime.name": "nodejs",
        },
    )
    uid = started_uid(agent)

    enrolled = gateway.admin.wait_for_agent(uid, lambda a: True, 5, f"agent {uid} to enroll")
    assert enrolled["status"] == "online"
    assert enrolled["description"] == {
        "identifying_attributes": {"service.name": name, "service.version": "0.5.0-interop"},
        "non_identifying_attributes": {
            "os.type": "linux",
            "host.name": "node-host",
            "process.runtime.name": "nodejs",
        },
    }
    assert enrolled["capabilities"] == [
        "AcceptsRemoteConfig",
        "ReportsHeartbeat",
        "ReportsRemoteConfig",
        "ReportsStatus",
    ]
    assert enrolled["capabilities_bitmask"] == 0x3003
    # The first message carries an UNSET remote config status with an empty hash.
    assert enrolled["remote_config"] == {
        "status": "UNSET",
        "last_remote_config_hash": "",
        "error_message": "",
    }
    assert enrolled["effective_config"] is None
    assert gateway.admin.find_one(**{"attr.service.name": name}) is not None

    # Heartbeats: every reply accepted (status 200, exact Content-Type, own uid), sequence_num follows.
    successes = wait_for_successes(agent, 4, 5 * HEARTBEAT_SECONDS + 3)
    last_seq = successes[-1]["a2s"]["sequenceNum"]
    heartbeat = gateway.admin.wait_for_agent(
        uid, lambda a: a["sequence_num"] >= last_seq, 2, f"sequence_num to reach {last_seq}"
    )
    assert heartbeat["sequence_num"] > enrolled["sequence_num"]
    assert heartbeat["last_seen"] > enrolled["last_seen"]
    assert heartbeat["status"] == "online"
    assert gateway.admin.summary()["by_status"]["online"] == 1

    code = agent.shutdown()
    assert code == 0, agent.stderr()
    events = agent.events()
    assert [e for e in events if e["name"] == FAIL] == []
    assert events[-1]["name"] == "shutdown"
    successes = agent.successes()
    assert [e["a2s"]["sequenceNum"] for e in successes] == list(range(1, len(successes) + 1))
    assert "agentDescription" in successes[0]["a2s"]
    for event in successes:
        s2a = event["s2a"]
        assert s2a["instanceUid"] == uid
        assert s2a["capabilities"] == caps.server_capabilities(offers_settings=True)
        assert s2a["flags"] == 0, f"unexpected flags (ReportFullState?) in reply to {event['a2s']}"
        assert "errorResponse" not in s2a
        assert "agentIdentification" not in s2a
    for event in successes[1:]:
        assert "agentDescription" not in event["a2s"]  # status compression: heartbeats only

    # No goodbye from this client: the agent stays online until --offline-after passes.
    after_shutdown = gateway.admin.agent(uid)
    assert after_shutdown is not None and after_shutdown["status"] == "online"
    offline = gateway.admin.wait_for_agent(
        uid, lambda a: a["status"] == "offline", OFFLINE_AFTER + 3, "the silent agent to go offline"
    )
    # (A heartbeat in flight during shutdown may have reached the gateway without a diag event.)
    assert offline["sequence_num"] >= successes[-1]["a2s"]["sequenceNum"]
    assert [a["instance_uid"] for a in gateway.admin.agents(status="offline")] == [uid]
    assert gateway.admin.agents(status="online") == []
    assert gateway.admin.agents(status="disconnected") == []
    summary = gateway.admin.summary()
    assert summary["by_status"]["offline"] == 1
    assert summary["by_type_version"] == {name: {"0.5.0-interop": 1}}
    assert summary["by_os"] == {"linux": 1}


def request_new_uid(gateway: Gateway, uid: str, sequence_num: int) -> pb.ServerToAgent:
    """What an agent sends to get a server-assigned uid, on behalf of the Node agent `uid`."""
    message = pb.AgentToServer(
        instance_uid=uuid.UUID(uid).bytes,
        sequence_num=sequence_num,
        capabilities=pb.AgentCapabilities_ReportsStatus | pb.AgentCapabilities_ReportsHeartbeat,
        flags=pb.AgentToServerFlags_RequestInstanceUid,
    )
    response = httpx2.post(
        gateway.opamp_url,
        content=message.SerializeToString(),
        headers={"Content-Type": "application/x-protobuf"},
        trust_env=False,
    )
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-protobuf"
    return pb.ServerToAgent.FromString(response.content)


def test_adopts_new_instance_uid_after_a_move(
    gateway_factory: GatewayFactory, node_agent: NodeAgentFactory
) -> None:
    gateway = gateway_factory()
    name = unique_name("node-interop-uid")
    old_uid = str(uuid.uuid4())
    agent = node_agent(gateway, instanceUid=old_uid, identifyingAttributes={"service.name": name})
    assert started_uid(agent) == old_uid
    wait_for_successes(agent, 2, 5 * HEARTBEAT_SECONDS + 3)

    # Right after a reply (the next heartbeat is about an interval away), move the agent's record.
    count = len(agent.successes())
    successes = wait_for_successes(agent, count + 1, 3 * HEARTBEAT_SECONDS + 2)
    reply = request_new_uid(gateway, old_uid, successes[-1]["a2s"]["sequenceNum"] + 1)
    assert not reply.HasField("error_response"), reply
    assert reply.instance_uid == uuid.UUID(old_uid).bytes
    new_uid = str(uuid.UUID(bytes=reply.agent_identification.new_instance_uid))
    assert new_uid != old_uid
    assert uuid.UUID(new_uid).version == 7

    # The client's next message still uses the old uid; the reply names the new one; it adopts it.
    events = wait_for_successes(agent, 2, 4 * HEARTBEAT_SECONDS + 3, uid=new_uid)
    later = events[len(successes) :]
    first_new = next(i for i, e in enumerate(later) if e["a2s"]["instanceUid"] == new_uid)
    assert first_new >= 1, "the client switched uid without being told"
    told = later[first_new - 1]
    assert told["a2s"]["instanceUid"] == old_uid
    assert told["s2a"]["instanceUid"] == old_uid
    assert told["s2a"]["agentIdentification"]["newInstanceUid"] == new_uid
    for event in later[first_new:]:
        assert event["a2s"]["instanceUid"] == new_uid
        assert event["s2a"]["instanceUid"] == new_uid
        assert "agentIdentification" not in event["s2a"]
    last_seq = events[-1]["a2s"]["sequenceNum"]

    moved = gateway.admin.wait_for_agent(
        new_uid, lambda a: a["sequence_num"] >= last_seq, 2, f"{new_uid} to reach sequence_num {last_seq}"
    )
    assert moved["previous_instance_uids"] == [old_uid]
    assert moved["description"]["identifying_attributes"] == {"service.name": name}
    assert moved["status"] == "online"
    by_old = gateway.admin.agent(old_uid)
    assert by_old is not None
    assert by_old["instance_uid"] == new_uid
    assert by_old["moved_from"] == old_uid
    listed = gateway.admin.find_one(**{"attr.service.name": name})
    assert listed is not None and listed["instance_uid"] == new_uid
    assert gateway.admin.summary()["total"] == 1

    assert agent.shutdown() == 0, agent.stderr()
    assert agent.events()[-1]["instanceUidStr"] == new_uid
    assert agent.events(FAIL) == []


def handed_over(events: list[Event], config_hash: str) -> Event | None:
    """agent.js's event for the remote config with this hash (hex), if the client handed it over."""
    return next((e for e in events if e["name"] == "remoteConfig" and e["configHash"] == config_hash), None)


def test_remote_config_applied_and_never_sent_without_accepts_remote_config(
    gateway_factory: GatewayFactory, node_agent: NodeAgentFactory
) -> None:
    gateway = gateway_factory()
    accepting_name, refusing_name = unique_name("node-accepts"), unique_name("node-refuses")
    accepting = node_agent(
        gateway,
        capabilities=["AcceptsRemoteConfig", "ReportsRemoteConfig"],
        identifyingAttributes={"service.name": accepting_name},
    )
    # The client's defaults: ReportsStatus and ReportsHeartbeat only.
    refusing = node_agent(gateway, identifyingAttributes={"service.name": refusing_name})
    accepting_uid, refusing_uid = started_uid(accepting), started_uid(refusing)
    for uid in (accepting_uid, refusing_uid):
        gateway.admin.wait_for_agent(uid, lambda a: True, 5, f"agent {uid} to enroll")

    hashes = []
    for version in (1, 2):
        body = f"exporters:\n  otlp:\n    endpoint: collector-{version}:4317\n"
        files = {"agent.yaml": ("text/yaml", body.encode())}
        desired = expected_hash(files).hex()
        put = gateway.admin.put_config(
            "node-both", config_spec(service_in([accepting_name, refusing_name]), files)
        )
        assert put["version"] == version
        events = accepting.wait_for(
            lambda es: handed_over(es, desired) is not None,  # noqa: B023 (called before the next iteration)
            5 * HEARTBEAT_SECONDS + 5,
            f"the client to hand over config version {version}",
        )
        handed = handed_over(events, desired)
        assert handed is not None
        assert handed["files"] == {"agent.yaml": {"contentType": "text/yaml", "body": body}}
        applied = gateway.admin.wait_for_agent(
            accepting_uid,
            applied_config(desired),
            5,
            f"config version {version} to show as applied",
        )
        assert applied["remote_config"] == {
            "status": "APPLIED",
            "last_remote_config_hash": desired,
            "error_message": "",
        }
        assert applied["config_sync"]["in_sync"] is True and applied["config_sync"]["configs"] == [
            "node-both"
        ]
        hashes.append(desired)

    # A few more heartbeats for the client without AcceptsRemoteConfig: none carries a config.
    wait_for_successes(refusing, len(refusing.successes()) + 3, 5 * HEARTBEAT_SECONDS + 3)
    shown = gateway.admin.agent(refusing_uid)
    assert shown is not None
    assert shown["config_sync"] == {
        "status": "unsupported",
        "in_sync": False,
        "desired_hash": hashes[-1],
        "reported_hash": None,
        "configs": ["node-both"],
    }
    assert gateway.admin.config("node-both")["rollout"] == {
        "strategy": "all",
        "matched": 2,
        "applied": 1,
        "applying": 0,
        "failed": 0,
        "pending": 0,
        "unsupported": 1,
        "offline": 0,
        "disconnected": 0,
    }
    applied_list = gateway.admin.agents(config="node-both", config_status="applied")
    assert [a["instance_uid"] for a in applied_list] == [accepting_uid]

    assert accepting.shutdown() == 0, accepting.stderr()
    assert refusing.shutdown() == 0, refusing.stderr()
    assert accepting.events(FAIL) == [] and refusing.events(FAIL) == []
    # On the wire: each version offered once; each reported APPLIED (status 1) right after.
    successes = accepting.successes()
    offered = [e["s2a"]["remoteConfig"] for e in successes if "remoteConfig" in e["s2a"]]
    assert [o["configHash"] for o in offered] == hashes
    reported = [
        (
            e["a2s"]["remoteConfigStatus"].get("lastRemoteConfigHash", ""),
            e["a2s"]["remoteConfigStatus"].get("status"),
        )
        for e in successes
        if "remoteConfigStatus" in e["a2s"]
    ]
    assert [r for r in reported if r[0]] == [(h, 1) for h in hashes]
    assert [e["configHash"] for e in accepting.events("remoteConfig")] == hashes
    assert refusing.events("remoteConfig") == []
    assert all("remoteConfig" not in e["s2a"] for e in refusing.successes())


def test_authenticated_client(gateway_factory: GatewayFactory, node_agent: NodeAgentFactory) -> None:
    """The client's `headers` option carries the agent key; a client without one gets 401 (a
    send.fail) and never enrolls."""
    gateway = gateway_factory(agent_key="interop-node-key-0123", admin_token="interop-admin-token")
    name = unique_name("node-interop-auth")
    agent = node_agent(gateway, identifyingAttributes={"service.name": name})
    uid = started_uid(agent)
    wait_for_successes(agent, 2, 5 * HEARTBEAT_SECONDS + 3)
    assert gateway.admin.wait_for_agent(uid, lambda a: a["status"] == "online", 3, "enrollment")

    intruder = node_agent(gateway, headers={}, identifyingAttributes={"service.name": name + "-nokey"})
    intruder_uid = started_uid(intruder)
    failed = intruder.wait_for(lambda es: any(e["name"] == FAIL for e in es), 10, "the keyless send to fail")
    assert [e for e in failed if e["name"] == SUCCESS] == []
    assert "401" in json.dumps([e for e in failed if e["name"] == FAIL])
    assert gateway.admin.agent(intruder_uid) is None
    assert agent.shutdown() == 0, agent.stderr()
