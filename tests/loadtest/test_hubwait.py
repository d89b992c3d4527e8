"""The lean agent's wait on gevent's hub (no monkey patching needed: the hub watches real file
descriptors): readable or timed out, one long-lived watcher per socket, nothing left behind."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import gevent
import pytest

from loadtest.hubwait import HubWait


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair()
    yield a, b
    a.close()
    b.close()


def test_times_out_when_nothing_comes(pair: tuple[socket.socket, socket.socket]) -> None:
    wait = HubWait()
    started = time.monotonic()
    assert wait(pair[0], 0.05) is False
    assert time.monotonic() - started >= 0.04
    wait.release()


def test_wakes_when_bytes_arrive_and_keeps_one_watcher(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    wait = HubWait()
    gevent.spawn_later(0.02, theirs.send, b"x")
    assert wait(ours, 5.0) is True
    watcher = wait._reader
    assert ours.recv(10) == b"x"
    gevent.spawn_later(0.02, theirs.send, b"y")
    assert wait(ours, 5.0) is True
    # The same watcher served both waits: no epoll change between them.
    assert wait._reader is watcher and watcher.active
    wait.release()
    assert wait._reader is None


def test_bytes_that_come_while_busy_are_seen_by_the_next_wait(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    ours, theirs = pair
    wait = HubWait()
    assert wait(ours, 0.01) is False
    theirs.send(b"z")
    # The agent is busy elsewhere (another greenlet runs): the watcher fires with no one waiting and
    # rests instead of firing on every loop.
    gevent.sleep(0.02)
    assert not wait._reader.active
    assert wait(ours, 5.0) is True
    assert ours.recv(10) == b"z"
    wait.release()


def test_a_new_socket_gets_a_new_watcher(pair: tuple[socket.socket, socket.socket]) -> None:
    wait = HubWait()
    assert wait(pair[0], 0.01) is False
    first = wait._reader
    wait.release()
    other, peer = socket.socketpair()
    try:
        peer.send(b"w")
        assert wait(other, 5.0) is True
        assert wait._reader is not first
    finally:
        wait.release()
        other.close()
        peer.close()


def test_a_wait_to_the_same_deadline_keeps_its_timer(pair: tuple[socket.socket, socket.socket]) -> None:
    ours, theirs = pair
    wait = HubWait()
    deadline = time.monotonic() + 0.3
    gevent.spawn_later(0.02, theirs.send, b"r")
    assert wait(ours, deadline - time.monotonic()) is True
    timer = wait._timer
    assert ours.recv(10) == b"r"
    # The reply came; the agent waits for the same next heartbeat: same timer, and it still fires.
    assert wait(ours, deadline - time.monotonic()) is False
    assert wait._timer is timer
    assert time.monotonic() >= deadline - 0.01
    # A later deadline gets a timer of its own.
    assert wait(ours, 0.02) is False
    assert wait._timer is not timer
    wait.release()
    assert wait._timer is None
