"""The rollout controller against a store double: count waves start from the agents targeted then,
a crashed writer's rollout is started by the next look, compare-and-set losers give up cleanly, and a
store failure waits for the next look."""

from __future__ import annotations

import time
from typing import Any

import pytest

from gateway.fleet.agent import AgentState, AgentWrite
from gateway.fleet.configs import Config, parse_request
from gateway.fleet.rollout_record import Rollout
from gateway.fleet.rollout_steps import start
from gateway.fleet.waves import in_wave
from gateway.metrics import Metrics
from gateway.node.rollouts import NoRollout, RolloutBusy, RolloutController
from gateway.opamp import capabilities as caps
from gateway.proto import anyvalue_pb2 as av, opamp_pb2 as pb
from gateway.store.base import StoreUnavailable
from tests.support.memory_store import MemoryStore
from tests.support.waiting import uid

pytestmark = pytest.mark.anyio

ACCEPTS = caps.REPORTS_STATUS | caps.ACCEPTS_REMOTE_CONFIG | caps.REPORTS_REMOTE_CONFIG
AGENTS = [uid(n) for n in range(1, 11)]


def _description() -> bytes:
    d = pb.AgentDescription()
    d.identifying_attributes.add(key="service.name", value=av.AnyValue(string_value="otelcol-contrib"))
    return d.SerializeToString()


async def _store(**rollout: Any) -> MemoryStore:
    store = MemoryStore()
    now = time.time()
    states = [
        AgentState(a, enrolled_at=now, last_seen=now, capabilities=ACCEPTS, description=_description())
        for a in AGENTS
    ]
    await store.write([AgentWrite(s, frozenset({"description"})) for s in states])
    await _put(store, "v: 1\n")
    await _put(store, "v: 2\n", rollout={"strategy": "staged", **rollout})
    return store


async def _put(store: MemoryStore, body: str, **extra: Any) -> Config:
    raw = {
        "selector": {"match": {"service.name": "otelcol-contrib"}},
        "files": {"c.yaml": {"body": body}},
        **extra,
    }
    config, _ = await store.put_config("base", parse_request("base", raw, max_bytes=1 << 20), time.time())
    return config


class Changes:
    def __init__(self) -> None:
        self.reasons: list[str] = []

    async def __call__(self, reason: str) -> None:
        self.reasons.append(reason)


def _controller(store: MemoryStore, changes: Changes | None = None) -> RolloutController:
    return RolloutController(
        store, changes or Changes(), Metrics(), interval=3600.0, offline_after=60.0, clock=time.time
    )


async def test_a_count_wave_takes_that_many_of_the_agents_targeted_now() -> None:
    store = await _store(waves=[{"count": 3}, 100])
    changes = Changes()
    controller = _controller(store, changes)
    # The admin API's second write never happened: the controller's next look starts the rollout.
    assert await controller.tick() == 1
    assert changes.reasons == ["rollout of base v2 progressing"]
    survey = await controller.survey("base")
    assert (survey.rollout.version, survey.rollout.previous_version) == (2, 1)
    assert sum(in_wave(a, 2, survey.rollout.cutoff) for a in AGENTS) == 3
    assert (survey.counts.targeted, survey.counts.pending, len(survey.reports)) == (3, 3, 10)
    # Started once: another look waits for the wave's agents to report.
    assert await controller.begin((await store.list_configs())[0]) is None
    assert await controller.tick() == 0


async def test_no_rollout_for_an_older_version() -> None:
    store = await _store()
    controller = _controller(store)
    await controller.tick()
    await _put(store, "v: 3\n")  # all at once: the version-2 record is left behind
    with pytest.raises(NoRollout, match="no rollout of its version 3"):
        await controller.survey("base")
    with pytest.raises(NoRollout, match="no config 'gone'"):
        await controller.survey("gone")
    with pytest.raises(NoRollout):
        await controller.act("base", "pause")
    assert await controller.tick() == 0


class _LosingStore(MemoryStore):
    """Another node's write always comes first."""

    async def put_rollout(self, rollout: Rollout, expected_rev: str | None) -> str | None:
        return None


async def test_losing_every_compare_and_set() -> None:
    store = _LosingStore()
    await _put(store, "v: 1\n")
    config = await _put(store, "v: 2\n", rollout={"strategy": "staged"})
    controller = _controller(store)
    assert await controller.begin(config) is None
    # An admin action that keeps losing says so (409) rather than retrying forever.
    await MemoryStore.put_rollout(store, _started(config), None)
    with pytest.raises(RolloutBusy, match="kept changing"):
        await controller.act("base", "pause")


def _started(config: Config) -> Rollout:
    return start("base", config.version, 1, config.spec.rollout, time.time(), [])


class _DownStore(MemoryStore):
    async def list_configs(self) -> list[Config]:
        raise StoreUnavailable("down")


async def test_a_store_failure_waits_for_the_next_look(caplog: pytest.LogCaptureFixture) -> None:
    controller = _controller(_DownStore())
    await controller._on_timer()
    assert "trying again next time" in caplog.text


async def test_agents_that_cannot_hold_a_wave_back_are_not_counted() -> None:
    store = await _store(waves=[100])
    now = time.time()
    offline = AgentState(
        uid(90), enrolled_at=now, last_seen=now - 3600, capabilities=ACCEPTS, description=_description()
    )
    refusing = AgentState(
        uid(91), enrolled_at=now, last_seen=now, capabilities=caps.REPORTS_STATUS, description=_description()
    )
    await store.write([AgentWrite(s, frozenset({"description"})) for s in (offline, refusing)])
    controller = _controller(store)
    await controller.tick()
    reported = {r.uid for r in (await controller.survey("base")).reports}
    assert reported == set(AGENTS)


async def test_a_strategy_only_change_starts_nothing() -> None:
    store = MemoryStore()
    await _put(store, "v: 1\n")
    config = await _put(store, "v: 1\n", rollout={"strategy": "staged"})
    assert config.version == 2
    assert await _controller(store).begin(config) is None
    assert await store.get_rollout("base") is None
