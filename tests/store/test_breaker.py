"""The circuit breaker around a store: closed -> open -> half-open -> closed (or open again)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace

import pytest

from gateway.fleet.agent import AgentState, AgentWrite
from gateway.fleet.configs import ConfigRequest, parse_request
from gateway.fleet.connection_settings import parse_spec
from gateway.store.base import AgentPage, AgentQuery, InvalidCursor, StoreError, StoreUnavailable
from gateway.store.breaker import CircuitBreaker, CircuitOpen, State
from tests.store.store_helpers import agent, full
from tests.store.test_contract_rollouts import rollout
from tests.support.memory_store import MemoryStore

pytestmark = pytest.mark.anyio

RESET = 10.0


class FlakyStore(MemoryStore):
    """A MemoryStore whose calls fail while `failing` is set; `calls` counts what reached it."""

    def __init__(self) -> None:
        super().__init__()
        self.failing: StoreError | None = None
        self.calls = 0
        self.gate: asyncio.Event | None = None

    async def _maybe_fail(self) -> None:
        self.calls += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.failing is not None:
            raise self.failing

    async def ping(self) -> None:
        await self._maybe_fail()

    async def get(self, uid: bytes) -> AgentState | None:
        await self._maybe_fail()
        return await super().get(uid)

    async def write(self, writes: Sequence[AgentWrite]) -> None:
        await self._maybe_fail()
        await super().write(writes)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def store() -> FlakyStore:
    return FlakyStore()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def states() -> list[State]:
    return []


@pytest.fixture
def breaker(store: FlakyStore, clock: Clock, states: list[State]) -> CircuitBreaker:
    return CircuitBreaker(store, failures=3, reset_after=RESET, clock=clock, on_state=states.append)


async def _fail(breaker: CircuitBreaker, times: int) -> None:
    for _ in range(times):
        with pytest.raises(StoreUnavailable):
            await breaker.ping()


async def test_stays_closed_below_the_threshold_and_success_resets_the_count(
    breaker: CircuitBreaker, store: FlakyStore
) -> None:
    store.failing = StoreUnavailable("down")
    await _fail(breaker, 2)
    store.failing = None
    await breaker.ping()
    store.failing = StoreUnavailable("down")
    await _fail(breaker, 2)
    assert breaker.state == "closed"
    assert store.calls == 5


async def test_opens_after_consecutive_failures_and_then_fails_fast(
    breaker: CircuitBreaker, store: FlakyStore, states: list[State]
) -> None:
    store.failing = StoreUnavailable("connection refused")
    await _fail(breaker, 3)
    assert breaker.state == "open"
    assert states == ["closed", "open"]
    calls = store.calls
    with pytest.raises(CircuitOpen) as raised:
        await breaker.get(b"\x01" * 16)
    assert store.calls == calls, "an open circuit must not reach the store"
    assert "connection refused" in str(raised.value)
    assert RESET * 0.8 <= raised.value.retry_after <= RESET * 1.2
    # CircuitOpen is a StoreUnavailable: everything that sheds on a failing store sheds on it too.
    assert isinstance(raised.value, StoreUnavailable)


async def test_half_open_lets_one_probe_through_and_closes_on_success(
    breaker: CircuitBreaker, store: FlakyStore, clock: Clock, states: list[State]
) -> None:
    store.failing = StoreUnavailable("down")
    await _fail(breaker, 3)
    clock.now += RESET * 1.2
    store.failing = None
    store.gate = asyncio.Event()
    probe = asyncio.create_task(breaker.ping())
    await asyncio.sleep(0)
    assert breaker.state == "half_open"
    # While the probe is out, other calls still fail fast.
    with pytest.raises(CircuitOpen):
        await breaker.write([full(agent())])
    store.gate.set()
    await probe
    assert states == ["closed", "open", "half_open", "closed"]
    await breaker.write([full(agent())])


async def test_a_failed_probe_opens_the_circuit_again(
    breaker: CircuitBreaker, store: FlakyStore, clock: Clock, states: list[State]
) -> None:
    store.failing = StoreUnavailable("down")
    await _fail(breaker, 3)
    clock.now += RESET * 1.2
    with pytest.raises(StoreUnavailable):
        await breaker.ping()
    assert breaker.state == "open"
    assert states == ["closed", "open", "half_open", "open"]
    with pytest.raises(CircuitOpen):
        await breaker.ping()


async def test_not_yet_time_to_probe(breaker: CircuitBreaker, store: FlakyStore, clock: Clock) -> None:
    store.failing = StoreUnavailable("down")
    await _fail(breaker, 3)
    clock.now += RESET * 0.7
    store.failing = None
    with pytest.raises(CircuitOpen):
        await breaker.ping()
    assert breaker.state == "open"


async def test_caller_errors_do_not_count(clock: Clock) -> None:
    class Refusing(FlakyStore):
        async def list_agents(self, query: AgentQuery, now: float, offline_after: float) -> AgentPage:
            raise InvalidCursor("invalid cursor: 'nope'")

    refusing = CircuitBreaker(Refusing(), failures=1, reset_after=RESET, clock=clock)
    for _ in range(3):
        with pytest.raises(InvalidCursor):
            await refusing.list_agents(AgentQuery(cursor="nope"), 0.0, 1.0)
    assert refusing.state == "closed"


async def test_a_cancelled_probe_leaves_the_next_call_to_probe(
    breaker: CircuitBreaker, store: FlakyStore, clock: Clock
) -> None:
    store.failing = StoreUnavailable("down")
    await _fail(breaker, 3)
    clock.now += RESET * 1.2
    store.failing = None
    store.gate = asyncio.Event()
    probe = asyncio.create_task(breaker.ping())
    await asyncio.sleep(0)
    probe.cancel()
    with pytest.raises(asyncio.CancelledError):
        await probe
    store.gate = None
    await breaker.ping()
    assert breaker.state == "closed"


async def test_every_store_method_goes_through_the_breaker(
    breaker: CircuitBreaker, store: FlakyStore
) -> None:
    state = agent()
    await breaker.write([full(state)])
    assert await breaker.get(state.instance_uid) == state
    assert (await breaker.list_agents(AgentQuery(), 0.0, 1.0)).agents == [state]
    assert (await breaker.summary(0.0, 1.0)).total == 1
    assert await breaker.pending_commands(10) == {}
    await breaker.write(
        [AgentWrite(state=replace(state, pending_command=0), changed=frozenset({"pending_command"}))]
    )
    assert await breaker.pending_commands(10) == {state.instance_uid: 0}
    assert await breaker.list_configs() == []
    assert await breaker.get_config("x") is None
    assert await breaker.delete_config("x") is False
    assert await breaker.config_versions("x") == []
    assert await breaker.get_rollout("x") is None
    assert await breaker.list_rollouts() == []
    assert await breaker.put_rollout(rollout("x"), None) is None
    settings = parse_spec("x", {"selector": {}, "own_logs": {"destination_endpoint": "https://x.example"}})
    stored, _ = await breaker.put_connection_settings("x", settings, 0.0)
    assert await breaker.get_connection_settings("x") == stored
    assert await breaker.list_connection_settings() == [stored]
    assert await breaker.delete_connection_settings("x") is True
    store.failing = StoreUnavailable("down")
    await _fail(breaker, 3)
    for call in (
        breaker.list_configs(),
        breaker.get_config("x"),
        breaker.delete_config("x"),
        breaker.config_versions("x"),
        breaker.get_rollout("x"),
        breaker.list_rollouts(),
        breaker.put_rollout(rollout("x"), None),
        breaker.summary(0.0, 1.0),
        breaker.list_agents(AgentQuery(), 0.0, 1.0),
        breaker.pending_commands(10),
        breaker.list_connection_settings(),
        breaker.get_connection_settings("x"),
        breaker.delete_connection_settings("x"),
    ):
        with pytest.raises(CircuitOpen):
            await call
    with pytest.raises(CircuitOpen):
        await breaker.put_config("x", _request(), 0.0)


def _request() -> ConfigRequest:
    return parse_request("x", {"selector": {}, "files": {"a.yaml": {"body": "x: 1"}}}, max_bytes=1 << 20)
