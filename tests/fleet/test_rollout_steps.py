"""How a rollout record moves: start, waves, halt (rollback offers), completion, operator actions."""

from __future__ import annotations

import uuid

import pytest

from gateway.fleet.configs import Config, ConfigFile, ConfigSpec
from gateway.fleet.desired import ConfigSet, RolloutView
from gateway.fleet.rollout_record import Rollout
from gateway.fleet.rollout_steps import (
    AgentReport,
    RolloutConflict,
    WaveCounts,
    pause,
    positions_of,
    resume,
    rollback,
    start,
    step,
    wave_counts,
)
from gateway.fleet.selector import Selector
from gateway.fleet.waves import in_wave, parse_strategy

UIDS = [uuid.UUID(int=n).bytes for n in range(1, 101)]
STRATEGY = parse_strategy(
    {"strategy": "staged", "waves": [{"count": 5}, 50, 100], "min_wave_seconds": 60, "max_failure_ratio": 0.2}
)
POSITIONS = positions_of(UIDS, 2)


def _started() -> Rollout:
    return start("base", 2, 1, STRATEGY, 100.0, POSITIONS)


def _reports(rollout: Rollout, status: str, healthy: bool | None = True) -> list[AgentReport]:
    return [
        AgentReport(uid, status if in_wave(uid, rollout.version, rollout.cutoff) else "pending", healthy)
        for uid in UIDS
    ]


def test_start_puts_exactly_the_count_in_the_first_wave() -> None:
    rollout = _started()
    assert (rollout.state, rollout.wave, rollout.previous_version, rollout.started_at) == (
        "progressing",
        0,
        1,
        100.0,
    )
    assert sum(in_wave(uid, 2, rollout.cutoff) for uid in UIDS) == 5
    assert rollout.events[-1].reason == "version 2 started, wave 1 of 3"


def test_wave_counts() -> None:
    rollout = _started()
    inside = [uid for uid in UIDS if in_wave(uid, 2, rollout.cutoff)]
    reports = [
        AgentReport(inside[0], "applied", True),
        AgentReport(inside[1], "applied", False),
        AgentReport(inside[2], "failed", None),
        AgentReport(inside[3], "applying", None),
        AgentReport(inside[4], "pending", None),
        *(AgentReport(uid, "failed", False) for uid in UIDS if uid not in inside),  # outside: not counted
    ]
    assert wave_counts(rollout, reports) == WaveCounts(
        targeted=5, applied=2, applying=1, failed=1, unhealthy=1, pending=1
    )


def test_a_good_change_walks_every_wave_and_completes() -> None:
    rollout = _started()
    now = 100.0
    assert step(rollout, wave_counts(rollout, _reports(rollout, "applied")), now + 30, POSITIONS) is None
    seen = []
    while rollout.state == "progressing":
        now += 61
        moved = step(rollout, wave_counts(rollout, _reports(rollout, "applied")), now, POSITIONS)
        assert moved is not None
        rollout = moved
        seen.append((rollout.state, rollout.wave, sum(in_wave(uid, 2, rollout.cutoff) for uid in UIDS)))
    assert seen[0][:2] == ("progressing", 1) and 30 < seen[0][2] < 70
    assert seen[1] == ("progressing", 2, 100)
    assert seen[2] == ("completed", 2, 100)
    assert [e.state for e in rollout.events] == ["progressing"] * 3 + ["completed"]


def test_a_failing_first_wave_halts_and_every_agent_is_offered_the_previous_version() -> None:
    rollout = _started()
    halted = step(rollout, wave_counts(rollout, _reports(rollout, "failed")), 101.0, POSITIONS)
    assert halted is not None and halted.state == "halted" and halted.wave == 0
    assert (
        halted.events[-1].reason
        == "5 of 5 agents failed (over max_failure_ratio 0.2): rolled back to version 1"
    )
    old, new = _config(1, "old"), _config(2, "new")
    view = RolloutView(version=2, previous=old, state=halted.state, cutoff=halted.cutoff)
    configs = ConfigSet((new,), rollouts={"base": view})
    assert {_body(configs, uid) for uid in UIDS} == {b"old"}
    # A halted rollout moves no more.
    assert step(halted, WaveCounts(), 1000.0, POSITIONS) is None


def test_unhealthy_after_applying_halts_when_required() -> None:
    rollout = _started()
    counts = wave_counts(rollout, _reports(rollout, "applied", healthy=False))
    halted = step(rollout, counts, 101.0, POSITIONS)
    assert halted is not None and halted.state == "halted"


def test_pause_resume_rollback() -> None:
    rollout = _started()
    paused = pause(rollout, 110.0)
    assert paused.state == "paused"
    assert step(paused, WaveCounts(), 1000.0, POSITIONS) is None
    with pytest.raises(RolloutConflict, match="only a progressing one pauses"):
        pause(paused, 111.0)
    resumed = resume(paused, 120.0)
    assert (resumed.state, resumed.wave_started_at) == ("progressing", 120.0)
    with pytest.raises(RolloutConflict, match="only a paused one resumes"):
        resume(resumed, 121.0)
    back = rollback(resumed, 130.0)
    assert (
        back.state == "rolled_back" and back.events[-1].reason == "rolled back to version 1 by the admin API"
    )
    with pytest.raises(RolloutConflict, match="rolled_back: its agents have version 1 already"):
        rollback(back, 131.0)
    with pytest.raises(RolloutConflict, match="no previous version"):
        rollback(start("fresh", 1, None, STRATEGY, 1.0, []), 2.0)


def test_rollback_to_a_chosen_version() -> None:
    rollout = start("base", 5, 4, STRATEGY, 100.0, POSITIONS)
    back = rollback(rollout, 110.0, 2)
    assert (back.state, back.previous_version) == ("rolled_back", 2)
    assert back.events[-1].reason == "rolled back to version 2 by the admin API"
    # A rolled-back (or halted) rollout may still be sent to another older version.
    again = rollback(back, 120.0, 3)
    assert (again.state, again.previous_version) == ("rolled_back", 3)
    with pytest.raises(RolloutConflict, match="older than 5"):
        rollback(rollout, 130.0, 5)
    with pytest.raises(RolloutConflict, match="older than 5"):
        rollback(rollout, 130.0, 7)


def _config(version: int, body: str) -> Config:
    spec = ConfigSpec(
        selector=Selector(match=(("service.name", "otelcol-contrib"),)),
        priority=0,
        files=(("c.yaml", ConfigFile("text/yaml", body.encode())),),
    )
    return Config("base", spec, version, 1.0, 1.0, spec.digest())


def _body(configs: ConfigSet, uid: bytes) -> bytes:
    desired = configs.resolve(uid, {"service.name": "otelcol-contrib"})
    assert desired is not None
    return desired.message.config.config_map["c.yaml"].body
