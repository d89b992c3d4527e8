"""The PyPI OpAMP client (opentelemetry-opamp-client 0.5b0) against a real gateway process.

Client quirks handled here (peers.md A1):
- `timeout_millis` defaults to 1 s; raised so a slow CI machine does not turn into retries (each
  retry also skips a sequence number, because the client counts failed attempts).
- `OpAMPAgent.start()` registers `stop` with atexit. Left there, it would fire after pytest ends and
  send a disconnect to a gateway that no longer exists (waiting out the HTTP timeout). `running()`
  unregisters it and checks that the test leaves no atexit handler behind.
- `stop()` sends its AgentDisconnect from the calling thread while the worker thread may still be
  sending a heartbeat; a heartbeat that lands after the goodbye re-opens the agent. The tests stop
  the agent right after a reply, when the next heartbeat is an interval away.

Remote config: the client hands it to the application in `OpAMPCallbacks.on_message`
(`MessageData.remote_config`, the AgentRemoteConfig as received; `OpAMPClient.decode_remote_config`
parses JSON files and refuses other content types). It reports nothing by itself: the application
calls `client.update_remote_config_status(hash, status)`, which returns the RemoteConfigStatus only
if it changed, builds a message with `build_remote_config_status_response_message` and queues it
with `agent.send`; later full states repeat the status. Messages are built when queued, so a
heartbeat queued while another message is in flight can repeat its sequence_num; the gateway then
asks for the full state, which these tests accept.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from unittest import mock

import pytest
from opentelemetry._opamp.agent import OpAMPAgent
from opentelemetry._opamp.callbacks import MessageData, OpAMPCallbacks
from opentelemetry._opamp.client import OpAMPClient
from opentelemetry._opamp.proto import opamp_pb2 as pb
from opentelemetry._opamp.transport.requests import RequestsTransport

from gateway.opamp import capabilities as caps
from gateway.transport.http_wire import GZIP_MIN_BYTES
from harness.waiting import wait_until
from tests.support.process import Gateway, GatewayFactory
from tests.support.remote_config import applied_config, config_spec, expected_hash, service_in

pytestmark = pytest.mark.interop

HEARTBEAT_SECONDS = 1.0
CLIENT_TIMEOUT_MS = 10_000
DEFAULT_CAPABILITY_NAMES = [
    "AcceptsRemoteConfig",
    "ReportsEffectiveConfig",
    "ReportsHeartbeat",
    "ReportsRemoteConfig",
    "ReportsStatus",
]
# With the default --agent-heartbeat-interval the gateway offers connection settings.
SERVER_CAPABILITIES = caps.server_capabilities(offers_settings=True)


@dataclass
class Exchange:
    request: pb.AgentToServer
    reply: pb.ServerToAgent
    status_code: int
    headers: dict[str, str]


@dataclass
class Recorder(OpAMPCallbacks):
    """The client's callbacks plus every HTTP exchange, as the client saw it."""

    connects: int = 0
    connect_failures: list[str] = field(default_factory=list)
    error_responses: list[str] = field(default_factory=list)
    exchanges: list[Exchange] = field(default_factory=list)
    # Every remote config the client handed to on_message.
    remote_configs: list[pb.AgentRemoteConfig] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)

    def on_connect(self, agent: OpAMPAgent, client: OpAMPClient) -> None:
        with self.changed:
            self.connects += 1
            self.changed.notify_all()

    def on_connect_failed(self, agent: OpAMPAgent, client: OpAMPClient, error: Exception) -> None:
        with self.changed:
            self.connect_failures.append(repr(error))

    def on_error(
        self, agent: OpAMPAgent, client: OpAMPClient, error_response: pb.ServerErrorResponse
    ) -> None:
        with self.changed:
            self.error_responses.append(str(error_response))

    def on_message(self, agent: OpAMPAgent, client: OpAMPClient, message: MessageData) -> None:
        if message.remote_config is not None:
            with self.changed:
                self.remote_configs.append(message.remote_config)
                self.changed.notify_all()

    def on_response(self, response: Any, *args: object, **kwargs: object) -> None:
        """A requests response hook: sees the raw exchange before the client decodes it."""
        with self.changed:
            self.exchanges.append(
                Exchange(
                    request=pb.AgentToServer.FromString(response.request.body),
                    reply=pb.ServerToAgent.FromString(response.content)
                    if response.ok
                    else pb.ServerToAgent(),
                    status_code=response.status_code,
                    headers={k.lower(): v for k, v in response.headers.items()},
                )
            )

    def wait_for_reply(self, after: int, timeout: float = 5 * HEARTBEAT_SECONDS) -> None:
        """Block until the client handled more than `after` successful replies."""
        with self.changed:
            if not self.changed.wait_for(lambda: self.connects > after, timeout):
                raise AssertionError(
                    f"no reply after #{after} within {timeout}s; failures: {self.connect_failures}"
                )

    def snapshot(self) -> list[Exchange]:
        with self.changed:
            return list(self.exchanges)


@dataclass
class ConfigApplier(Recorder):
    """An application on the client: applies each remote config (decoded with the client's own
    decoder) and reports APPLIED the way the client expects it to."""

    # (config_hash, decoded files) of each config applied, in order.
    applied: list[tuple[bytes, dict[str, Any]]] = field(default_factory=list)

    def on_message(self, agent: OpAMPAgent, client: OpAMPClient, message: MessageData) -> None:
        super().on_message(agent, client, message)
        config = message.remote_config
        if config is None:
            return
        files = dict(client.decode_remote_config(config))
        status = client.update_remote_config_status(config.config_hash, pb.RemoteConfigStatuses_APPLIED)
        with self.changed:
            self.applied.append((config.config_hash, files))
        if status is not None:
            agent.send(client.build_remote_config_status_response_message(status))


def make_agent(
    gateway: Gateway,
    service_name: str,
    recorder: Recorder,
    *,
    effective_config: bool = True,
    capabilities: int | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[OpAMPClient, OpAMPAgent]:
    # The client's own default capabilities unless told otherwise.
    extra: dict[str, Any] = {} if capabilities is None else {"capabilities": capabilities}
    transport = RequestsTransport()
    transport.session.trust_env = False  # loopback only, whatever *_PROXY says
    transport.session.hooks["response"].append(recorder.on_response)
    client = OpAMPClient(
        endpoint=gateway.opamp_url,
        timeout_millis=CLIENT_TIMEOUT_MS,
        transport=transport,
        # The client's own way to authenticate: extra headers on every request.
        headers=gateway.agent_headers if headers is None else headers,
        agent_identifying_attributes={"service.name": service_name, "service.version": "1.2.3"},
        agent_non_identifying_attributes={
            "os.type": "linux",
            "host.name": "interop-host",
            "process.pid": 4242,
            "interop.flag": True,
        },
        **extra,
    )
    if effective_config:
        client.update_effective_config({"sdk.json": {"sampler": "always_on"}}, "application/json")
    agent = OpAMPAgent(interval=HEARTBEAT_SECONDS, callbacks=recorder, client=client)
    return client, agent


@contextlib.contextmanager
def running(agent: OpAMPAgent) -> Iterator[OpAMPAgent]:
    """Start the agent; at the end stop it and take back the atexit hook that start() registered.

    Registrations are watched during start() so that a client version registering more (or other)
    hooks fails here instead of leaving something to fire after pytest has finished.
    """
    try:
        with mock.patch.object(atexit, "register", wraps=atexit.register) as register:
            agent.start()
        hooks = [c.args[0] for c in register.call_args_list if getattr(c.args[0], "__self__", None) is agent]
        assert hooks == [agent.stop], f"OpAMPAgent.start() registered {hooks} with atexit"
        yield agent
    finally:
        agent.stop(timeout=5)
        atexit.unregister(agent.stop)


def find_agent(gateway: Gateway, service_name: str) -> dict[str, Any] | None:
    return gateway.admin.find_one(**{"attr.service.name": service_name})


def seen(text: str) -> datetime:
    return datetime.fromisoformat(text)


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_enroll_heartbeat_and_disconnect(gateway_factory: GatewayFactory) -> None:
    gateway = gateway_factory()
    name = unique_name("py-interop")
    recorder = Recorder()
    _client, agent = make_agent(gateway, name, recorder)

    with running(agent):
        # Enrollment: the full state shows up with everything the client described.
        enrolled = wait_until(lambda: find_agent(gateway, name), 5, f"agent {name} to enroll")
        uid = enrolled["instance_uid"]
        assert uuid.UUID(uid).version == 7
        assert enrolled["status"] == "online"
        assert enrolled["description"] == {
            "identifying_attributes": {"service.name": name, "service.version": "1.2.3"},
            "non_identifying_attributes": {
                "os.type": "linux",
                "host.name": "interop-host",
                "process.pid": 4242,
                "interop.flag": True,
            },
        }
        assert enrolled["capabilities"] == DEFAULT_CAPABILITY_NAMES
        assert enrolled["capabilities_bitmask"] == 0x3007
        files = enrolled["effective_config"]["files"]
        assert files == {
            "sdk.json": {
                "content_type": "application/json",
                "body": '{"sampler": "always_on"}',
                "encoding": "utf-8",
            }
        }
        assert enrolled["remote_config"] is None  # the client reports none before its first config
        assert enrolled["health"] is None
        assert enrolled["previous_instance_uids"] == []
        first = gateway.admin.agent(uid)
        assert first is not None and first.keys() == enrolled.keys()

        # Heartbeats: over a couple of intervals, sequence_num and last_seen move on.
        advanced = gateway.admin.wait_for_agent(
            uid,
            lambda a: (
                a["sequence_num"] >= first["sequence_num"] + 2
                and seen(a["last_seen"]) > seen(first["last_seen"])
            ),
            4 * HEARTBEAT_SECONDS + 2,
            "two heartbeats to advance sequence_num and last_seen",
        )
        assert advanced["enrolled_at"] == enrolled["enrolled_at"]
        assert advanced["status"] == "online"

        # The list reads the store, not the node's pending writes: it catches up after a flush.
        def listed_caught_up() -> bool:
            listed = find_agent(gateway, name)
            return listed is not None and listed["sequence_num"] >= advanced["sequence_num"]

        wait_until(listed_caught_up, 3, "the agent list to show the flushed heartbeats")

        summary = gateway.admin.summary()
        assert summary["total"] == 1
        assert summary["by_status"]["online"] == 1
        assert sum(summary["by_status"].values()) == 1
        assert summary["by_type_version"] == {name: {"1.2.3": 1}}
        assert summary["by_os"] == {"linux": 1}

        # Stop right after a reply, so no heartbeat can land after the goodbye.
        recorder.wait_for_reply(after=recorder.connects)
        agent.stop(timeout=5)
        gone = gateway.admin.wait_for_agent(
            uid, lambda a: a["status"] == "disconnected", 3, "the agent to show as disconnected"
        )
        assert gone["sequence_num"] > advanced["sequence_num"]
        wait_until(
            lambda: gateway.admin.summary()["by_status"]["disconnected"] == 1,
            3,
            "the fleet summary to count the disconnected agent",
        )

    # running() stopped the agent a second time, just as the atexit hook would have: another
    # AgentDisconnect. It must be answered like the first, and the agent stays disconnected.
    exchanges = recorder.snapshot()
    goodbyes = [e for e in exchanges if e.request.HasField("agent_disconnect")]
    assert len(goodbyes) == 2
    for exchange in goodbyes:
        assert exchange.status_code == 200
        assert not exchange.reply.HasField("error_response")
        assert exchange.reply.instance_uid == exchange.request.instance_uid
    final = gateway.admin.agent(uid)
    assert final is not None and final["status"] == "disconnected"

    # Every exchange: 200, protobuf, gzip (requests asks for it) unless the reply is too small to
    # gain from it, the uid echoed, the server's capabilities announced, and no ReportFullState (the
    # first message was a complete report).
    assert [e.request.sequence_num for e in exchanges] == list(range(len(exchanges)))
    for exchange in exchanges:
        assert exchange.status_code == 200
        assert exchange.headers["content-type"] == "application/x-protobuf"
        worth_it = len(exchange.reply.SerializeToString()) >= GZIP_MIN_BYTES
        assert (exchange.headers.get("content-encoding") == "gzip") is worth_it
        assert exchange.reply.instance_uid == uuid.UUID(uid).bytes
        assert exchange.reply.capabilities == SERVER_CAPABILITIES
        assert not exchange.reply.flags & pb.ServerToAgentFlags_ReportFullState
        assert not exchange.reply.HasField("agent_identification")
    assert recorder.connect_failures == []
    assert recorder.error_responses == []


def test_incomplete_first_report_gets_one_report_full_state(gateway_factory: GatewayFactory) -> None:
    """The client declares ReportsEffectiveConfig but has no effective config yet, so its first
    message is not a full report: the gateway asks once for the full state, the client sends it
    again, and after that plain heartbeats get no more requests."""
    gateway = gateway_factory()
    name = unique_name("py-interop-partial")
    recorder = Recorder()
    _client, agent = make_agent(gateway, name, recorder, effective_config=False)

    with running(agent):
        wait_until(lambda: len(recorder.snapshot()) >= 3, 5 * HEARTBEAT_SECONDS, "three exchanges")
        recorder.wait_for_reply(after=recorder.connects)
        agent.stop(timeout=5)

    exchanges = recorder.snapshot()
    assert all(e.status_code == 200 and not e.reply.HasField("error_response") for e in exchanges)
    first, second, *rest = exchanges
    assert first.request.HasField("agent_description")
    assert first.reply.flags & pb.ServerToAgentFlags_ReportFullState
    # The client answers with another full state (which again lacks the config it does not have).
    assert second.request.HasField("agent_description")
    assert second.request.sequence_num == first.request.sequence_num + 1
    assert not second.reply.flags & pb.ServerToAgentFlags_ReportFullState
    heartbeats = [e for e in rest if not e.request.HasField("agent_disconnect")]
    assert heartbeats, "no heartbeat after the second full state"
    for exchange in heartbeats:
        assert not exchange.request.HasField("agent_description")
        assert not exchange.reply.flags & pb.ServerToAgentFlags_ReportFullState

    shown = find_agent(gateway, name)
    assert shown is not None
    assert shown["effective_config"] is None
    assert shown["status"] == "disconnected"
    assert recorder.connect_failures == []


def sdk_files(ratio: float) -> dict[str, tuple[str, bytes]]:
    return {
        "sdk.json": ("application/json", json.dumps({"sampler": "traceidratio", "ratio": ratio}).encode())
    }


def test_remote_config_is_applied_and_the_admin_api_shows_it(gateway_factory: GatewayFactory) -> None:
    gateway = gateway_factory()
    name = unique_name("py-config")
    recorder = ConfigApplier()
    _client, agent = make_agent(gateway, name, recorder)

    with running(agent):
        enrolled = wait_until(lambda: find_agent(gateway, name), 5, f"agent {name} to enroll")
        uid = enrolled["instance_uid"]
        assert enrolled["config_sync"] == {
            "status": "none",
            "in_sync": False,
            "desired_hash": None,
            "reported_hash": None,
            "configs": [],
        }
        hashes = []
        for version, ratio in enumerate((0.25, 0.5), start=1):
            files = sdk_files(ratio)
            put = gateway.admin.put_config("py-sdk", config_spec({"match": {"service.name": name}}, files))
            assert put["version"] == version
            desired = expected_hash(files).hex()
            applied = gateway.admin.wait_for_agent(
                uid,
                applied_config(desired),
                5 * HEARTBEAT_SECONDS + 5,
                f"version {version} to be applied",
            )
            assert applied["config_sync"] == {
                "status": "applied",
                "in_sync": True,
                "desired_hash": desired,
                "reported_hash": desired,
                "configs": ["py-sdk"],
            }
            assert applied["remote_config"] == {
                "status": "APPLIED",
                "last_remote_config_hash": desired,
                "error_message": "",
            }
            hashes.append(bytes.fromhex(desired))

        # The client decoded what the gateway sent: each version once, in order.
        assert recorder.applied == [
            (hashes[0], {"sdk.json": {"sampler": "traceidratio", "ratio": 0.25}}),
            (hashes[1], {"sdk.json": {"sampler": "traceidratio", "ratio": 0.5}}),
        ]
        config = gateway.admin.config("py-sdk")
        assert config["rollout"] == {
            "strategy": "all",
            "matched": 1,
            "applied": 1,
            "applying": 0,
            "failed": 0,
            "pending": 0,
            "unsupported": 0,
            "offline": 0,
            "disconnected": 0,
        }
        assert [
            a["instance_uid"] for a in gateway.admin.agents(config="py-sdk", config_status="applied")
        ] == [uid]
        assert gateway.admin.agents(config="py-sdk", config_status="pending") == []

        recorder.wait_for_reply(after=recorder.connects)
        agent.stop(timeout=5)

    exchanges = recorder.snapshot()
    assert all(e.status_code == 200 and not e.reply.HasField("error_response") for e in exchanges)
    # Each version was sent exactly once (never again while the report was on its way, nor after).
    offers = [e.reply.remote_config for e in exchanges if e.reply.HasField("remote_config")]
    assert [o.config_hash for o in offers] == hashes
    assert offers == recorder.remote_configs
    reports = {
        (e.request.remote_config_status.last_remote_config_hash, e.request.remote_config_status.status)
        for e in exchanges
        if e.request.HasField("remote_config_status")
    }
    assert reports == {(h, pb.RemoteConfigStatuses_APPLIED) for h in hashes}
    assert recorder.connect_failures == []


def test_a_staged_rollout_reaches_completed(gateway_factory: GatewayFactory) -> None:
    """The real client under a staged change: it applies the new version in its wave, and the
    gateway's controller walks the rollout to `completed`."""
    gateway = gateway_factory(rollout_interval=0.2)
    name = unique_name("py-staged")
    recorder = ConfigApplier()
    _client, agent = make_agent(gateway, name, recorder)
    selector = {"match": {"service.name": name}}
    staged = {"strategy": "staged", "waves": [100], "min_wave_seconds": 0, "max_failure_ratio": 0}

    with running(agent):
        uid = wait_until(lambda: find_agent(gateway, name), 5, f"agent {name} to enroll")["instance_uid"]
        gateway.admin.put_config("py-staged", config_spec(selector, sdk_files(0.25)))
        first = expected_hash(sdk_files(0.25)).hex()
        gateway.admin.wait_for_agent(uid, applied_config(first), 5 * HEARTBEAT_SECONDS + 5, "version 1")
        gateway.admin.put_config("py-staged", {**config_spec(selector, sdk_files(0.5)), "rollout": staged})
        second = expected_hash(sdk_files(0.5)).hex()
        gateway.admin.wait_for_agent(uid, applied_config(second), 5 * HEARTBEAT_SECONDS + 5, "version 2")

        def completed() -> dict[str, Any] | None:
            rollout: dict[str, Any] = gateway.admin.get_json("/api/v1/configs/py-staged/rollout")
            return rollout if rollout["state"] == "completed" else None

        done = wait_until(completed, 10, "the rollout to complete")
        assert (done["version"], done["previous_version"], done["applied"], done["failed"]) == (2, 1, 1, 0)
        recorder.wait_for_reply(after=recorder.connects)
        agent.stop(timeout=5)
    assert [h.hex() for h, _ in recorder.applied] == [first, second]


def test_a_client_without_accepts_remote_config_never_receives_one(gateway_factory: GatewayFactory) -> None:
    gateway = gateway_factory()
    accepting_name, refusing_name = unique_name("py-accepts"), unique_name("py-refuses")
    files = sdk_files(0.1)
    desired = expected_hash(files).hex()
    # The config exists before either agent connects, and matches both.
    gateway.admin.put_config("py-both", config_spec(service_in([accepting_name, refusing_name]), files))
    accepting, refusing = ConfigApplier(), ConfigApplier()
    _, accepting_agent = make_agent(gateway, accepting_name, accepting)
    no_remote_config = (
        pb.AgentCapabilities_ReportsStatus
        | pb.AgentCapabilities_ReportsHeartbeat
        | pb.AgentCapabilities_ReportsEffectiveConfig
    )
    _, refusing_agent = make_agent(gateway, refusing_name, refusing, capabilities=no_remote_config)

    with running(accepting_agent), running(refusing_agent):
        accepted = wait_until(lambda: find_agent(gateway, accepting_name), 5, "the accepting agent to enroll")
        refused = wait_until(lambda: find_agent(gateway, refusing_name), 5, "the refusing agent to enroll")
        gateway.admin.wait_for_agent(
            accepted["instance_uid"],
            lambda a: a["config_sync"]["status"] == "applied",
            5 * HEARTBEAT_SECONDS + 5,
            "the accepting agent to apply the config",
        )
        # A few more exchanges for the other one, each a chance to get the config it must not get.
        refusing.wait_for_reply(after=refusing.connects + 2, timeout=5 * HEARTBEAT_SECONDS + 5)
        shown = gateway.admin.agent(refused["instance_uid"])
        assert shown is not None
        assert shown["capabilities"] == ["ReportsEffectiveConfig", "ReportsHeartbeat", "ReportsStatus"]
        assert shown["config_sync"] == {
            "status": "unsupported",
            "in_sync": False,
            "desired_hash": desired,
            "reported_hash": None,
            "configs": ["py-both"],
        }
        assert gateway.admin.config("py-both")["rollout"] == {
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
        unsupported = gateway.admin.agents(config="py-both", config_status="unsupported")
        assert [a["instance_uid"] for a in unsupported] == [refused["instance_uid"]]

    assert [c.config_hash.hex() for c in accepting.remote_configs] == [desired]
    assert refusing.remote_configs == [] and refusing.applied == []
    exchanges = refusing.snapshot()
    assert len(exchanges) >= 4
    for exchange in exchanges:
        assert exchange.status_code == 200
        assert not exchange.reply.HasField("error_response")
        assert not exchange.reply.HasField("remote_config")


def test_authenticated_client(gateway_factory: GatewayFactory) -> None:
    """With agent keys and an admin token: the client's `headers` carry its key; without one it is
    refused with 401 and never enrolls."""
    gateway = gateway_factory(agent_key="interop-python-key-0123", admin_token="interop-admin-token")
    name = unique_name("py-interop-auth")
    recorder = Recorder()
    _client, agent = make_agent(gateway, name, recorder)
    with running(agent):
        enrolled = wait_until(lambda: find_agent(gateway, name), 5, f"agent {name} to enroll")
        assert enrolled["status"] == "online"
        recorder.wait_for_reply(after=recorder.connects)
        agent.stop(timeout=5)
    assert recorder.connect_failures == []
    assert all(e.status_code == 200 for e in recorder.snapshot())

    stranger = Recorder()
    _client, intruder = make_agent(gateway, unique_name("py-interop-nokey"), stranger, headers={})
    with running(intruder):
        wait_until(lambda: stranger.snapshot() or None, 5, "the keyless client's first attempt")
    assert {e.status_code for e in stranger.snapshot()} == {401}
    assert stranger.connects == 0
    assert gateway.admin.summary()["total"] == 1
