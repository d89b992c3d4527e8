"""UnfinishedRequests: header and body deadlines, the per-address cap and the port's budget."""

from __future__ import annotations

import asyncio

import pytest

from gateway.transport.unfinished import UnfinishedRequests, address_key

pytestmark = pytest.mark.anyio


class _Socket:
    def __init__(self) -> None:
        self.dropped: str | None = None

    def drop_unfinished(self, why: str) -> None:
        self.dropped = why


def _tracker(counted: list[str], **overrides: float) -> UnfinishedRequests:
    values: dict[str, float] = {"header_timeout": 0.2, "body_timeout": 0.4, "per_address": 2, "total": 3}
    values.update(overrides)
    return UnfinishedRequests(
        header_timeout=values["header_timeout"],
        body_timeout=values["body_timeout"],
        per_address=int(values["per_address"]),
        total=int(values["total"]),
        count=counted.append,
    )


async def _until(check: object, timeout: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not callable(check) or not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


@pytest.mark.parametrize(
    ("peer", "key"),
    [
        (("127.0.0.2", 5000), "127.0.0.2"),
        (("2001:db8::1", 5000, 0, 0), "2001:db8::/64"),
        (("2001:db8::ffff:1", 5000, 0, 0), "2001:db8::/64"),
        (("::ffff:10.1.2.3", 5000, 0, 0), "10.1.2.3"),
        (("fe80::1%eth0", 5000, 0, 2), "fe80::/64"),
        ("/run/gateway.sock", ""),
        (None, ""),
        ((), ""),
        (("not-an-address", 1), ""),
    ],
)
def test_address_key(peer: object, key: str) -> None:
    assert address_key(peer) == key


async def test_sockets_over_the_per_address_cap_are_refused_others_are_not() -> None:
    counted: list[str] = []
    tracker = _tracker(counted, total=10)
    a, b, c, d = _Socket(), _Socket(), _Socket(), _Socket()
    assert tracker.begin(a, "10.0.0.1") and tracker.begin(b, "10.0.0.1")
    assert not tracker.begin(c, "10.0.0.1")
    assert counted == ["refused"]
    assert tracker.begin(d, "10.0.0.2")
    assert tracker.from_address("10.0.0.1") == 2 and len(tracker) == 3
    # Beginning again while unfinished changes nothing.
    assert tracker.begin(a, "10.0.0.1") and tracker.from_address("10.0.0.1") == 2
    tracker.done(a)
    assert tracker.begin(c, "10.0.0.1")
    for socket in (b, c, d):
        tracker.done(socket)
    tracker.done(d)  # twice: nothing happens
    assert len(tracker) == 0 and tracker.from_address("10.0.0.1") == 0
    assert a not in tracker


async def test_a_head_past_its_deadline_is_dropped_never_before() -> None:
    counted: list[str] = []
    tracker = _tracker(counted)
    loop = asyncio.get_running_loop()
    started = loop.time()
    slow, quick = _Socket(), _Socket()
    tracker.begin(slow, "a")
    tracker.begin(quick, "b")
    tracker.head_done(quick)
    tracker.done(quick)
    await _until(lambda: slow.dropped is not None)
    assert loop.time() - started >= 0.2
    assert slow.dropped == "header" and quick.dropped is None
    assert counted == ["header"] and len(tracker) == 0


async def test_a_body_gets_its_own_deadline_after_the_head() -> None:
    counted: list[str] = []
    tracker = _tracker(counted)
    loop = asyncio.get_running_loop()
    socket = _Socket()
    tracker.begin(socket, "a")
    await asyncio.sleep(0.1)
    head_at = loop.time()
    tracker.head_done(socket)
    tracker.head_done(socket)  # a second call (pipelining) keeps the body's deadline
    await _until(lambda: socket.dropped is not None)
    assert loop.time() - head_at >= 0.4
    assert socket.dropped == "body" and counted == ["body"]


async def test_over_the_budget_the_oldest_head_is_evicted_then_bodies() -> None:
    counted: list[str] = []
    tracker = _tracker(counted, per_address=10, header_timeout=30, body_timeout=30)
    first, second, third, fourth, fifth = (_Socket() for _ in range(5))
    tracker.begin(first, "a")
    tracker.begin(second, "a")
    tracker.begin(third, "a")
    tracker.head_done(first)
    # Full: the oldest still sending its head goes, not the one further along.
    assert tracker.begin(fourth, "a")
    assert second.dropped == "evicted" and first.dropped is None
    tracker.head_done(third)
    tracker.head_done(fourth)
    # Only bodies left: the oldest of them goes.
    assert tracker.begin(fifth, "a")
    assert first.dropped == "evicted"
    assert counted == ["evicted", "evicted"]
    assert len(tracker) == 3 and tracker.from_address("a") == 3
