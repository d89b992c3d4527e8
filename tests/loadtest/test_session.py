"""The lean agent's protocol rules on a real loopback socket, against a scripted server: what it
sends is what the model (`harness.agent.SimAgent`) sends, and it answers pings, close frames, pushes
and refusals as an OpAMP agent must."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from gateway.proto import opamp_pb2 as pb
from harness.agent import Reaction, SimAgent
from harness.ports import free_port
from loadtest.frames import OP_CLOSE, OP_PING, OP_PONG, OP_TEXT
from loadtest.handshake import HandshakeError, UpgradeRefused
from loadtest.options import Options, Targets
from loadtest.session import ConnectionClosed, ServerRefused, WsSession
from tests.support.ws_peer import Peer, refusing


@dataclass
class Recorder:
    requests: list[tuple[str, Exception | None]] = field(default_factory=list)
    reactions: list[Reaction] = field(default_factory=list)

    def request(self, name: str, started: float, length: int, error: Exception | None) -> None:
        assert started <= time.perf_counter()
        self.requests.append((name, error))

    def reacted(self, reaction: Reaction) -> None:
        self.reactions.append(reaction)

    @property
    def names(self) -> list[str]:
        return [name for name, _ in self.requests]


# Every session a test made, closed after it.
_SESSIONS: list[WsSession] = []


@pytest.fixture(autouse=True)
def _close_sessions() -> Iterator[None]:
    yield
    while _SESSIONS:
        _SESSIONS.pop().close()


@pytest.fixture
def peer() -> Iterator[Peer]:
    server = Peer()
    try:
        yield server
    finally:
        server.close()


def _session(
    peer: Peer, recorder: Recorder, *ports: int, agent_key: str = "", source: str | None = "127.1.0.9"
) -> WsSession:
    targets = tuple(("127.0.0.1", port) for port in (ports or (peer.port,)))
    options = Options(targets=targets, heartbeat=30.0, reply_timeout=5.0, agent_key=agent_key)
    session = WsSession(SimAgent(index=0), options, recorder, Targets(targets, 0), source)
    _SESSIONS.append(session)
    return session


def _connected(peer: Peer, recorder: Recorder, **kwargs: str) -> WsSession:
    """A session past its handshake and first full report (answered with an empty reply)."""
    session = _session(peer, recorder, **kwargs)
    peer.answer_in_background()
    assert session.open()
    peer.joined()
    session.start()
    first = peer.read_message()
    assert first.HasField("agent_description") and first.sequence_num == 0
    peer.reply(pb.ServerToAgent(instance_uid=session.agent.uid))
    # No heartbeat due for a while: step() waits for the server's frames.
    session.next_heartbeat = time.monotonic() + 30
    session.step()
    assert recorder.requests == [("connect", None), ("full report", None)]
    return session


def _beat(session: WsSession) -> None:
    session.next_heartbeat = 0.0
    session.step()
    session.next_heartbeat = time.monotonic() + 30


def test_the_upgrade_comes_from_the_agents_source_address_with_its_key(peer: Peer) -> None:
    recorder = Recorder()
    _connected(peer, recorder, agent_key="s3cret")
    assert b"\r\nAuthorization: Bearer s3cret\r\n" in peer.request
    assert peer.conn is not None and peer.conn.getpeername()[0] == "127.1.0.9"


def test_heartbeats_are_the_models_and_each_is_a_request_with_its_round_trip(peer: Peer) -> None:
    recorder = Recorder()
    session = _connected(peer, recorder)
    twin = SimAgent(index=0, uid=session.agent.uid)
    twin.next_message()
    for _ in range(3):
        _beat(session)
        got = peer.read_message()
        assert got == twin.heartbeat()
        peer.reply(pb.ServerToAgent(instance_uid=got.instance_uid))
        session.step()
    assert recorder.names[2:] == ["heartbeat"] * 3 and all(e is None for _, e in recorder.requests)
    # A heartbeat is not sent while a message still waits for its reply.
    _beat(session)
    _beat(session)
    assert session.pending and len(session.pending) == 1


def test_a_ping_is_answered_with_a_masked_pong_carrying_its_payload(peer: Peer) -> None:
    session = _connected(peer, Recorder())
    peer.send_frame(OP_PING, b"\x01\x02\x03\x04")
    session.step()
    assert peer.read_frame() == (OP_PONG, b"\x01\x02\x03\x04")


def test_report_full_state_is_answered_with_a_full_report(peer: Peer) -> None:
    recorder = Recorder()
    session = _connected(peer, recorder)
    _beat(session)
    peer.read_message()
    peer.reply(pb.ServerToAgent(flags=pb.ServerToAgentFlags_ReportFullState))
    session.step()
    again = peer.read_message()
    assert again.HasField("agent_description") and again.sequence_num == 2
    assert recorder.requests[-1] == ("heartbeat", None)
    assert [name for name, _ in session.pending] == ["full report"]


def test_a_new_uid_is_adopted_by_the_next_heartbeat(peer: Peer) -> None:
    session = _connected(peer, Recorder())
    offer = pb.ServerToAgent()
    offer.agent_identification.new_instance_uid = b"\x09" * 16
    peer.reply(offer)
    session.step()
    _beat(session)
    beat = peer.read_message()
    assert beat.instance_uid == b"\x09" * 16 and beat.sequence_num == 1


class _CountingSends:
    """The session's socket, counting the system calls that send."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.sends = 0

    def send(self, data: bytes) -> int:
        self.sends += 1
        return self.sock.send(data)

    def sendall(self, data: bytes) -> None:
        self.sends += 1
        self.sock.sendall(data)

    def __getattr__(self, name: str) -> object:
        return getattr(self.sock, name)


def test_a_pushed_config_is_reported_applying_then_applied_with_the_effective_config(peer: Peer) -> None:
    recorder = Recorder()
    session = _connected(peer, recorder)
    assert session.connection is not None
    counting = _CountingSends(session.connection)
    session.replace_socket(counting)  # type: ignore[arg-type]
    push = pb.ServerToAgent()
    push.remote_config.config_hash = b"h1"
    push.remote_config.config.config_map["collector.yaml"].body = b"# opamp-loadtest changed_at=1\n"
    peer.reply(push)
    session.step()
    applying, applied = peer.read_message(), peer.read_message()
    assert applying.remote_config_status.status == pb.RemoteConfigStatuses_APPLYING
    assert applied.remote_config_status.status == pb.RemoteConfigStatuses_APPLIED
    assert applied.remote_config_status.last_remote_config_hash == b"h1"
    assert applied.effective_config.config_map.config_map["collector.yaml"].body.startswith(b"# opamp")
    assert [name for name, _ in session.pending] == ["config applying", "config applied"]
    # Both frames in one write: one system call on each side of the socket.
    assert counting.sends == 1
    assert recorder.reactions[-1].applied is not None and recorder.reactions[-1].applied[0] == b"h1"
    for _ in range(2):
        peer.reply(pb.ServerToAgent())
        session.step()
    assert recorder.names[-2:] == ["config applying", "config applied"] and not session.pending


def test_retry_info_is_honoured_then_the_agent_reports_in_full(peer: Peer) -> None:
    recorder = Recorder()
    session = _connected(peer, recorder)
    _beat(session)
    peer.read_message()
    refusal = pb.ServerToAgent()
    refusal.error_response.type = pb.ServerErrorResponseType_Unavailable
    refusal.error_response.error_message = "busy"
    refusal.error_response.retry_info.retry_after_nanoseconds = 300_000_000
    peer.reply(refusal)
    started = time.monotonic()
    assert session.step() == pytest.approx(0.3)
    assert time.monotonic() - started >= 0.3
    name, error = recorder.requests[-1]
    assert name == "heartbeat" and isinstance(error, ServerRefused) and "busy" in str(error)
    again = peer.read_message()
    assert again.HasField("agent_description")


def test_a_close_frame_is_echoed_and_ends_the_connection_with_a_full_report_next(peer: Peer) -> None:
    recorder = Recorder()
    session = _connected(peer, recorder)
    peer.send_frame(OP_CLOSE, (4000).to_bytes(2, "big") + b"taken over")
    with pytest.raises(ConnectionClosed, match="4000") as caught:
        session.step()
    assert peer.read_frame() == (OP_CLOSE, (4000).to_bytes(2, "big"))
    session.fail(caught.value)
    assert recorder.names[-1] == "connection" and session.agent.full_report_due


def test_a_text_frame_is_refused(peer: Peer) -> None:
    session = _connected(peer, Recorder())
    peer.send_frame(OP_TEXT, b"hello")
    with pytest.raises(ServerRefused, match="opcode 1"):
        session.step()


def test_a_lost_connection_fails_the_waiting_messages(peer: Peer) -> None:
    recorder = Recorder()
    session = _connected(peer, recorder)
    _beat(session)
    peer.read_message()
    assert peer.conn is not None
    peer.conn.close()
    with pytest.raises((ConnectionClosed, OSError)) as caught:
        session.step()
    session.fail(caught.value)
    assert recorder.names[-1] == "heartbeat" and recorder.requests[-1][1] is caught.value


def test_a_wrong_accept_key_fails_the_connect(peer: Peer) -> None:
    recorder = Recorder()
    session = _session(peer, recorder)
    peer.answer_in_background(
        lambda _key: b"HTTP/1.1 101 OK\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: bm9wZQ==\r\n\r\n"
    )
    assert not session.open()
    [(name, error)] = recorder.requests
    assert name == "connect" and isinstance(error, HandshakeError) and "Accept" in str(error)


@pytest.mark.parametrize(("status", "hint", "slept"), [(503, "0.4", 0.4), (401, None, 0.5)])
def test_a_refused_upgrade_waits_as_told_and_moves_to_another_gateway(
    peer: Peer, status: int, hint: str | None, slept: float
) -> None:
    recorder = Recorder()
    other = free_port()
    session = _session(peer, recorder, peer.port, other)
    peer.answer_in_background(refusing(status, hint))
    started = time.monotonic()
    assert not session.open()
    waited = time.monotonic() - started
    # With a Retry-After, as long as it says; without, a jittered 0.5..1.5 s.
    assert slept <= waited < (slept + 0.3 if hint else 1.6)
    [(name, error)] = recorder.requests
    assert name == "connect" and isinstance(error, UpgradeRefused) and error.status == status
    assert session.targets.current == ("127.0.0.1", other)


def test_a_gateway_that_is_gone_sends_its_agents_to_the_others() -> None:
    gone = socket.socket()
    gone.bind(("127.0.0.1", 0))
    # Bound, never listening: connecting is refused, as after the gateway was killed.
    ports = (gone.getsockname()[1], 4001, 4002, 4003)
    targets = tuple(("127.0.0.1", port) for port in ports)
    moved = set()
    try:
        for n in range(40):
            recorder = Recorder()
            options = Options(targets=targets, reply_timeout=2.0)
            session = WsSession(SimAgent(index=n), options, recorder, Targets(targets, 0), None)
            session.targets.move()
            moved.add(session.targets.current)
        session = WsSession(SimAgent(index=0), options, recorder, Targets(targets, 0), None)
        assert not session.open()
        assert isinstance(recorder.requests[-1][1], ConnectionRefusedError)
        assert session.targets.current != targets[0]
    finally:
        gone.close()
    assert moved == set(targets[1:])
