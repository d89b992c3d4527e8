"""The lean agent against a real gateway: its key accepted, the server's pings answered (or the
gateway would drop it within its ping timeout), heartbeats and a pushed config handled."""

from __future__ import annotations

import time
import uuid

from harness.agent import CHANGED_AT_MARKER, SERVICE_NAME, Reaction, SimAgent
from loadtest.handshake import UpgradeRefused
from loadtest.options import Options, Targets
from loadtest.session import FAILURES, WsSession
from tests.support.process import GatewayFactory


def _uid_text(uid: bytes) -> str:
    return str(uuid.UUID(bytes=uid))


class _Recorder:
    def __init__(self) -> None:
        self.requests: list[tuple[str, Exception | None]] = []
        self.applied: list[Reaction] = []

    def request(self, name: str, started: float, length: int, error: Exception | None) -> None:
        self.requests.append((name, error))

    def reacted(self, reaction: Reaction) -> None:
        if reaction.applied is not None:
            self.applied.append(reaction)


def test_the_lean_agent_holds_a_pinged_connection_and_applies_a_pushed_config(
    gateway_factory: GatewayFactory,
) -> None:
    gateway = gateway_factory(agent_key="k3y", ws_ping_interval=0.2, ws_ping_timeout=0.5, enrollment_rate=0)
    targets = (("127.0.0.1", gateway.opamp_port),)
    recorder = _Recorder()
    options = Options(targets=targets, heartbeat=0.5, reply_timeout=5.0, agent_key="k3y")
    session = WsSession(SimAgent(index=0), options, recorder, Targets(targets, 0), "127.1.0.7")
    try:
        assert session.open()
        session.start()
        deadline = time.monotonic() + 3.0
        pushed = False
        while time.monotonic() < deadline:
            session.step()
            if not pushed and ("heartbeat", None) in recorder.requests:
                pushed = True
                body = f"{CHANGED_AT_MARKER.decode()}{time.time():.6f}\nreceivers: {{}}\n"
                gateway.admin.put_config(
                    "lean",
                    {
                        "selector": {"match": {"service.name": SERVICE_NAME}},
                        "files": {"collector.yaml": {"content_type": "text/yaml", "body": body}},
                    },
                )
    finally:
        session.close()
    failures = [(name, error) for name, error in recorder.requests if error is not None]
    assert failures == []
    names = [name for name, _ in recorder.requests]
    # Pings every 0.2 s for 3 s with a 0.5 s timeout: the connection survived only if each was answered.
    assert names[:2] == ["connect", "full report"] and names.count("connect") == 1
    assert names.count("heartbeat") >= 4
    assert {"config applying", "config applied"} <= set(names) and len(recorder.applied) == 1
    # The gateway saw the same sequence numbers the model counted (no gap: no ReportFullState).
    assert session.agent.seq >= 5
    gateway.admin.wait_for_agent(
        _uid_text(session.agent.uid),
        lambda record: record["sequence_num"] == session.agent.seq,
        5,
        "the last sequence_num stored",
    )


def test_a_wrong_agent_key_is_a_refused_connect(gateway_factory: GatewayFactory) -> None:
    gateway = gateway_factory(agent_key="k3y")
    targets = (("127.0.0.1", gateway.opamp_port),)
    recorder = _Recorder()
    options = Options(targets=targets, reply_timeout=5.0, agent_key="wrong")
    session = WsSession(SimAgent(index=0), options, recorder, Targets(targets, 0), None)
    assert not session.open()
    [(name, error)] = recorder.requests
    assert name == "connect" and isinstance(error, UpgradeRefused) and error.status == 401
    assert isinstance(error, FAILURES)
