"""The driver (loadtest/driver.py) on real loopback sockets against a scripted server: a session
handed to it heartbeats from its heap, answers pings and replies as the session's rules say, waits out
a retry hint without blocking anything else, fails an unanswered message, and hands the session back
to its user when it ends (or when the user is killed while parked)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import gevent
import pytest

from gateway.proto import opamp_pb2 as pb
from harness.agent import SimAgent
from loadtest.driver import TICK, Driver
from loadtest.frames import OP_BINARY, OP_CLOSE, OP_PING, OP_PONG
from loadtest.options import Options, Targets
from loadtest.session import ConnectionClosed, NoReply, ServerRefused, WsSession
from tests.loadtest.test_session import Recorder
from tests.support.ws_peer import Answer, Peer, switching


class Driving:
    """Sessions handed to one driver on a thread of their own (its own gevent hub), as the users of a
    Locust worker hand theirs; `stop` kills the parked users, as Locust stopping them does."""

    def __init__(self, driver: Driver, *sessions: WsSession) -> None:
        self.driver = driver
        self.backoffs: list[float | None] = []
        self.killed: list[bool] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(sessions,), daemon=True)
        self._thread.start()

    def _run(self, sessions: tuple[WsSession, ...]) -> None:
        users = [gevent.spawn(self.driver.drive, session) for session in sessions]
        while not self._stop.is_set() and not all(user.ready() for user in users):
            gevent.sleep(0.01)
        gevent.killall(users)
        # A killed greenlet ends "successfully", with the GreenletExit as its value.
        self.killed = [isinstance(user.value, gevent.GreenletExit) for user in users]
        self.backoffs = [
            None if killed else user.value for user, killed in zip(users, self.killed, strict=True)
        ]

    def join(self, timeout: float = 10.0) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the driven sessions did not end"

    def stop(self) -> None:
        self._stop.set()
        self.join()


@pytest.fixture
def peer() -> Iterator[Peer]:
    server = Peer()
    try:
        yield server
    finally:
        server.close()


def _connected(
    peer: Peer,
    recorder: Recorder,
    heartbeat: float = 30.0,
    reply_timeout: float = 5.0,
    answer: Answer = switching,
) -> WsSession:
    """A session past its handshake that has sent its first full report (not answered yet)."""
    targets = (("127.0.0.1", peer.port),)
    options = Options(targets=targets, heartbeat=heartbeat, reply_timeout=reply_timeout)
    session = WsSession(SimAgent(index=0), options, recorder, Targets(targets, 0), "127.1.0.9")
    peer.answer_in_background(answer)
    assert session.open()
    peer.joined()
    session.start()
    first = peer.read_message()
    assert first.HasField("agent_description")
    return session


def _next_message(peer: Peer) -> pb.AgentToServer:
    """The next data message, answering nothing else (pongs are skipped)."""
    while True:
        opcode, payload = peer.read_frame()
        if opcode == OP_BINARY:
            return pb.AgentToServer.FromString(payload[1:])
        assert opcode == OP_PONG, opcode


def test_heartbeats_and_pongs_come_from_the_driver_and_a_close_hands_the_session_back(peer: Peer) -> None:
    recorder = Recorder()
    session = _connected(peer, recorder, heartbeat=0.2)
    session.next_heartbeat = time.monotonic() + 0.2
    driving = Driving(Driver(), session)
    peer.reply(pb.ServerToAgent(instance_uid=session.agent.uid))
    started = time.monotonic()
    for seq in (1, 2, 3):
        beat = _next_message(peer)
        assert beat.sequence_num == seq and beat.instance_uid == session.agent.uid
        assert not beat.HasField("agent_description")
        peer.reply(pb.ServerToAgent(instance_uid=session.agent.uid))
    # Three heartbeats 0.2 s apart, the first 0.2 s in: not sooner than the interval says.
    assert time.monotonic() - started >= 0.6 - 2 * TICK
    peer.send_frame(OP_PING, b"are you there")
    # Heartbeats may come first; each is answered.
    while (frame := peer.read_frame())[0] == OP_BINARY:
        peer.reply(pb.ServerToAgent(instance_uid=session.agent.uid))
    assert frame == (OP_PONG, b"are you there")
    assert peer.conn is not None
    peer.conn.close()
    driving.join()
    assert driving.backoffs == [1.0] and len(driving.driver) == 0
    assert session.connection is None and session.agent.full_report_due
    names = recorder.names
    assert names[:5] == ["connect", "full report", "heartbeat", "heartbeat", "heartbeat"]
    assert [error for _, error in recorder.requests[:5]] == [None] * 5
    assert isinstance(recorder.requests[-1][1], ConnectionClosed)


def test_a_retry_hint_is_waited_out_while_pings_are_answered_then_a_full_report(peer: Peer) -> None:
    recorder = Recorder()
    session = _connected(peer, recorder)
    driving = Driving(Driver(), session)
    refusal = pb.ServerToAgent()
    refusal.error_response.type = pb.ServerErrorResponseType_Unavailable
    refusal.error_response.error_message = "busy"
    refusal.error_response.retry_info.retry_after_nanoseconds = 400_000_000
    peer.reply(refusal)
    refused = time.monotonic()
    peer.send_frame(OP_PING, b"p")
    # The pong comes during the wait: the driver does not sleep for one agent.
    assert peer.read_frame() == (OP_PONG, b"p")
    assert time.monotonic() - refused < 0.4
    again = peer.read_message()
    assert again.HasField("agent_description")
    assert time.monotonic() - refused >= 0.4
    name, error = recorder.requests[-1]
    assert name == "full report" and isinstance(error, ServerRefused)
    peer.reply(pb.ServerToAgent(instance_uid=session.agent.uid))
    # The reply is recorded once the driver's greenlet reads it: not before stop() on a busy machine.
    deadline = time.monotonic() + 5.0
    while len(recorder.requests) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    driving.stop()
    assert driving.killed == [True] and len(driving.driver) == 0
    assert [name for name, _ in recorder.requests] == ["connect", "full report", "full report"]


def test_a_message_left_unanswered_fails_after_the_reply_timeout(peer: Peer) -> None:
    recorder = Recorder()
    session = _connected(peer, recorder, reply_timeout=0.3)
    sent = time.monotonic()
    driving = Driving(Driver(), session)
    driving.join()
    assert time.monotonic() - sent >= 0.3
    name, error = recorder.requests[-1]
    assert name == "full report" and isinstance(error, NoReply)
    assert driving.backoffs == [1.0] and session.connection is None


def test_a_user_killed_while_parked_takes_its_open_session_back(peer: Peer) -> None:
    recorder = Recorder()
    session = _connected(peer, recorder)
    driving = Driving(Driver(), session)
    peer.reply(pb.ServerToAgent(instance_uid=session.agent.uid))
    peer.send_frame(OP_PING, b"1")
    assert peer.read_frame() == (OP_PONG, b"1")
    driving.stop()
    assert driving.killed == [True] and len(driving.driver) == 0
    # The user closes it (Locust's on_stop): a close frame on the same connection.
    assert session.connection is not None
    session.close()
    assert peer.read_frame() == (OP_CLOSE, (1000).to_bytes(2, "big"))
    assert recorder.names == ["connect", "full report"]


def test_frames_that_came_with_the_handshake_are_answered_when_handed_over(peer: Peer) -> None:
    ping = bytes((0x80 | OP_PING, 2)) + b"hi"
    recorder = Recorder()
    session = _connected(peer, recorder, answer=lambda key: switching(key) + ping)
    driving = Driving(Driver(), session)
    assert peer.read_frame() == (OP_PONG, b"hi")
    driving.stop()
    session.close()


def test_one_driver_runs_many_sessions_and_ends_each_alone() -> None:
    peers = [Peer() for _ in range(5)]
    try:
        recorder = Recorder()
        sessions = [_connected(peer, recorder, heartbeat=0.1) for peer in peers]
        driver = Driver()
        driving = Driving(driver, *sessions)
        for peer, session in zip(peers, sessions, strict=True):
            peer.reply(pb.ServerToAgent(instance_uid=session.agent.uid))
        for _ in range(3):
            for peer, session in zip(peers, sessions, strict=True):
                assert _next_message(peer).sequence_num > 0
                peer.reply(pb.ServerToAgent(instance_uid=session.agent.uid))
        assert peers[0].conn is not None
        peers[0].conn.close()
        # The others keep beating after one ended.
        deadline = time.monotonic() + 5
        while len(driver) == 5 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(driver) == 4
        for peer, session in zip(peers[1:], sessions[1:], strict=True):
            assert _next_message(peer).sequence_num > 3
            peer.reply(pb.ServerToAgent(instance_uid=session.agent.uid))
        driving.stop()
        assert driving.killed == [False, True, True, True, True] and len(driver) == 0
        for session in sessions[1:]:
            session.close()
    finally:
        for peer in peers:
            peer.close()
