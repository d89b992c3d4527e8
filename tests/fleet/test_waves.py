"""The pure rollout math: strategy parsing (400 naming the field), positions, cutoffs, thresholds."""

from __future__ import annotations

import math
import uuid
from typing import Any

import pytest
from hypothesis import given, strategies as st

from gateway.fleet.waves import (
    ALL_AT_ONCE,
    MAX_WAVES,
    InvalidRollout,
    RolloutState,
    RolloutStrategy,
    Wave,
    cutoff_for,
    failure_ratio,
    in_wave,
    next_step,
    parse_strategy,
    position,
    wants_new_version,
)

UIDS = [uuid.UUID(int=n).bytes for n in range(1, 2001)]
STAGED: dict[str, Any] = {
    "strategy": "staged",
    "waves": [5, 25, 100],
    "min_wave_seconds": 60,
    "max_failure_ratio": 0.05,
    "require_healthy": True,
}


def test_all_is_the_default_and_round_trips() -> None:
    assert parse_strategy({}) == ALL_AT_ONCE
    assert parse_strategy({"strategy": "all"}).to_json() == {"strategy": "all"}


def test_staged_round_trips_with_percentages_and_counts() -> None:
    parsed = parse_strategy({**STAGED, "waves": [{"count": 10}, 2.5, 100]})
    assert parsed.waves == (Wave(count=10), Wave(percent=2.5), Wave(percent=100.0))
    assert parsed.to_json() == {**STAGED, "waves": [{"count": 10}, 2.5, 100], "min_wave_seconds": 60.0}
    assert parse_strategy(parsed.to_json()) == parsed


def test_staged_defaults_and_an_implied_last_wave() -> None:
    assert parse_strategy({"strategy": "staged"}) == RolloutStrategy(
        staged=True, waves=(Wave(percent=5.0), Wave(percent=25.0), Wave(percent=100.0))
    )
    assert parse_strategy({"strategy": "staged", "waves": [{"count": 3}]}).waves == (
        Wave(count=3),
        Wave(percent=100.0),
    )


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        ([], "rollout"),
        ({"strategy": "canary"}, "rollout.strategy"),
        ({"strategy": "all", "waves": [100]}, "rollout.waves"),
        ({**STAGED, "speed": 1}, "rollout.speed"),
        ({**STAGED, "waves": []}, "rollout.waves"),
        ({**STAGED, "waves": "5,100"}, "rollout.waves"),
        ({**STAGED, "waves": list(range(1, MAX_WAVES + 2))}, "rollout.waves"),
        ({**STAGED, "waves": [0, 100]}, "rollout.waves[0]"),
        ({**STAGED, "waves": [5, 101]}, "rollout.waves[1]"),
        ({**STAGED, "waves": [True]}, "rollout.waves[0]"),
        ({**STAGED, "waves": [25, 5, 100]}, "rollout.waves[1]"),
        ({**STAGED, "waves": [{"count": 5}, {"count": 5}]}, "rollout.waves[1]"),
        ({**STAGED, "waves": [{"count": 0}]}, "rollout.waves[0].count"),
        ({**STAGED, "waves": [{"count": 1.5}]}, "rollout.waves[0].count"),
        ({**STAGED, "waves": [{"share": 5}]}, "rollout.waves[0].share"),
        ({**STAGED, "min_wave_seconds": -1}, "rollout.min_wave_seconds"),
        ({**STAGED, "min_wave_seconds": math.inf}, "rollout.min_wave_seconds"),
        ({**STAGED, "max_failure_ratio": 1.5}, "rollout.max_failure_ratio"),
        ({**STAGED, "max_failure_ratio": "0.1"}, "rollout.max_failure_ratio"),
        ({**STAGED, "require_healthy": "yes"}, "rollout.require_healthy"),
    ],
)
def test_bad_strategies_name_the_field(raw: object, field: str) -> None:
    with pytest.raises(InvalidRollout) as caught:
        parse_strategy(raw)
    assert caught.value.field == field
    assert str(caught.value).startswith(f"{field}: ")


def test_positions_are_deterministic_spread_and_differ_by_version() -> None:
    first = [position(uid, 2) for uid in UIDS]
    assert first == [position(uid, 2) for uid in UIDS]
    assert all(0.0 <= p < 1.0 for p in first)
    # Roughly uniform: each tenth of the space holds about a tenth of the agents.
    for tenth in range(10):
        share = sum(tenth / 10 <= p < (tenth + 1) / 10 for p in first) / len(first)
        assert 0.07 < share < 0.13
    # A new version reshuffles, so the same agents are not always the canaries.
    canaries = {uid for uid in UIDS if in_wave(uid, 2, 0.05)}
    assert canaries != {uid for uid in UIDS if in_wave(uid, 3, 0.05)}


def test_percentage_waves_need_no_fleet_and_never_shrink() -> None:
    assert cutoff_for(Wave(percent=25.0), []) == 0.25
    assert cutoff_for(Wave(percent=5.0), [], previous=0.3) == 0.3
    assert cutoff_for(Wave(percent=100.0), []) == 1.0
    assert all(in_wave(uid, 7, 1.0) for uid in UIDS)


@given(st.integers(min_value=1, max_value=50), st.integers(min_value=0, max_value=60))
def test_a_count_wave_takes_exactly_that_many_of_the_agents_targeted(count: int, fleet: int) -> None:
    uids = UIDS[:fleet]
    cutoff = cutoff_for(Wave(count=count), [position(uid, 4) for uid in uids])
    assert sum(in_wave(uid, 4, cutoff) for uid in uids) == min(count, fleet)


def test_count_wave_membership_is_stable_as_agents_come_and_go() -> None:
    uids = UIDS[:100]
    cutoff = cutoff_for(Wave(count=10), [position(uid, 4) for uid in uids])
    members = {uid for uid in uids if in_wave(uid, 4, cutoff)}
    # Agents leaving, or new ones arriving, do not move the others in or out.
    survivors = uids[50:] + UIDS[100:200]
    assert {uid for uid in survivors if in_wave(uid, 4, cutoff)} >= members & set(survivors)
    assert {uid for uid in uids[50:] if in_wave(uid, 4, cutoff)} == members & set(uids[50:])


def test_which_version_an_agent_wants_by_state() -> None:
    inside = next(uid for uid in UIDS if in_wave(uid, 9, 0.05))
    outside = next(uid for uid in UIDS if not in_wave(uid, 9, 0.05))
    going: tuple[RolloutState, ...] = ("progressing", "paused")
    for state in going:
        assert wants_new_version(state, inside, 9, 0.05)
        assert not wants_new_version(state, outside, 9, 0.05)
    assert wants_new_version("completed", outside, 9, 0.05)
    ended: tuple[RolloutState, ...] = ("halted", "rolled_back")
    for state in ended:
        assert not wants_new_version(state, inside, 9, 0.05)


def test_failure_ratio() -> None:
    assert failure_ratio(0, 0, 0, True) == 0.0
    assert failure_ratio(20, 1, 1, True) == 0.1
    assert failure_ratio(20, 1, 1, False) == 0.05
    assert failure_ratio(2, 2, 2, True) == 1.0


STRATEGY = parse_strategy(STAGED)


@pytest.mark.parametrize(
    ("wave", "now", "counts", "step"),
    [
        (0, 30.0, (10, 10, 0, 0), "wait"),  # not yet min_wave_seconds
        (0, 61.0, (10, 9, 0, 0), "wait"),  # an agent still applying
        (0, 61.0, (10, 10, 0, 0), "advance"),
        (0, 61.0, (100, 95, 5, 0), "advance"),  # at the limit: still good
        (0, 10.0, (100, 90, 6, 0), "halt"),  # over it: at once, before min_wave_seconds
        (1, 61.0, (100, 95, 0, 6), "halt"),  # unhealthy after applying counts
        (2, 61.0, (10, 10, 0, 0), "complete"),
        (0, 61.0, (0, 0, 0, 0), "advance"),  # a wave that targets no agent yet
    ],
)
def test_next_step(wave: int, now: float, counts: tuple[int, int, int, int], step: str) -> None:
    targeted, applied, failed, unhealthy = counts
    got = next_step(
        STRATEGY, wave, 0.0, now, targeted=targeted, applied=applied, failed=failed, unhealthy=unhealthy
    )
    assert got == step


def test_unhealthy_is_ignored_without_require_healthy() -> None:
    lenient = parse_strategy({**STAGED, "require_healthy": False})
    assert next_step(lenient, 0, 0.0, 61.0, targeted=10, applied=10, failed=0, unhealthy=10) == "advance"
