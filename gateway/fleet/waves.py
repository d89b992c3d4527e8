"""Staged rollouts, the pure part: a config's rollout strategy and the wave math.

A config's body may carry a strategy:

    "rollout": {"strategy": "all"}                       (the default: everyone at once)
    "rollout": {"strategy": "staged", "waves": [5, 25, {"count": 200}, 100],
                "min_wave_seconds": 60, "max_failure_ratio": 0.05, "require_healthy": true}

`waves` are cumulative: a number is a percentage of the agents the new version targets, `{"count":
n}` an absolute number of them. A last wave below 100% is followed by an implied 100% one.

Wave membership is a fixed point in hash space for each agent: `position(uid, version)` is a
number in [0, 1) computed from the instance uid and the version, the same on every node. A wave is
a *cutoff* in that space: an agent whose position is below the cutoff gets the new version, every
other one keeps the previous version. A percentage wave's cutoff is the percentage itself, so it
needs no knowledge of the fleet; a count wave's cutoff is computed once, when the wave starts, from
the positions of the agents targeted then (`cutoff_for`), and stored with the rollout. Either way
the membership stays put while agents come and go, and an agent that appears later gets what its
position says.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

MAX_WAVES = 20
MAX_MIN_WAVE_SECONDS = 7 * 24 * 3600
DEFAULT_WAVES = (5.0, 25.0, 100.0)
DEFAULT_MIN_WAVE_SECONDS = 60.0
DEFAULT_MAX_FAILURE_RATIO = 0.05
_SCALE = float(1 << 64)

RolloutState = Literal["progressing", "paused", "completed", "halted", "rolled_back"]
ROLLOUT_STATES: tuple[RolloutState, ...] = ("progressing", "paused", "completed", "halted", "rolled_back")


class InvalidRollout(ValueError):
    """A rollout strategy the admin API refuses; `field` is the JSON path of the bad part."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


@dataclass(frozen=True, slots=True)
class Wave:
    """One cumulative wave: a percentage (0 < percent <= 100) or an absolute count of agents."""

    percent: float | None = None
    count: int | None = None

    def to_json(self) -> float | int | dict[str, int]:
        if self.count is not None:
            return {"count": self.count}
        assert self.percent is not None
        return int(self.percent) if self.percent.is_integer() else self.percent


@dataclass(frozen=True, slots=True)
class RolloutStrategy:
    staged: bool = False
    waves: tuple[Wave, ...] = ()
    min_wave_seconds: float = DEFAULT_MIN_WAVE_SECONDS
    max_failure_ratio: float = DEFAULT_MAX_FAILURE_RATIO
    require_healthy: bool = True

    def to_json(self) -> dict[str, Any]:
        if not self.staged:
            return {"strategy": "all"}
        return {
            "strategy": "staged",
            "waves": [w.to_json() for w in self.waves],
            "min_wave_seconds": self.min_wave_seconds,
            "max_failure_ratio": self.max_failure_ratio,
            "require_healthy": self.require_healthy,
        }


ALL_AT_ONCE = RolloutStrategy()


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _wave(raw: object, field: str) -> Wave:
    if isinstance(raw, dict):
        unknown = set(raw) - {"count"}
        if unknown:
            raise InvalidRollout(
                f"{field}.{sorted(unknown)[0]}", "unknown field; a wave is a percentage or {count}"
            )
        count = _number(raw.get("count"))
        if count is None or not count.is_integer() or count < 1:
            raise InvalidRollout(f"{field}.count", "must be a positive integer (a number of agents)")
        return Wave(count=int(count))
    percent = _number(raw)
    if percent is None or not 0 < percent <= 100:
        raise InvalidRollout(field, 'must be a percentage above 0 and at most 100, or {"count": n}')
    return Wave(percent=percent)


def _waves(raw: object) -> tuple[Wave, ...]:
    if not isinstance(raw, list) or not raw:
        raise InvalidRollout("rollout.waves", "must be a non-empty list of cumulative percentages or {count}")
    if len(raw) > MAX_WAVES:
        raise InvalidRollout("rollout.waves", f"at most {MAX_WAVES} waves")
    waves = [_wave(item, f"rollout.waves[{i}]") for i, item in enumerate(raw)]
    for i in range(1, len(waves)):
        before, now = waves[i - 1], waves[i]
        same_kind = (before.percent is None) == (now.percent is None)
        if same_kind and (now.percent or now.count or 0) <= (before.percent or before.count or 0):
            raise InvalidRollout(
                f"rollout.waves[{i}]", "waves are cumulative: each must be above the one before"
            )
    if waves[-1].percent != 100.0:
        waves.append(Wave(percent=100.0))
    return tuple(waves)


def parse_strategy(raw: object) -> RolloutStrategy:
    """The `rollout` object of a config body; InvalidRollout names the first bad field."""
    if not isinstance(raw, dict):
        raise InvalidRollout("rollout", "must be an object with a strategy (all or staged)")
    strategy = raw.get("strategy", "all")
    allowed = (
        {"strategy"}
        if strategy == "all"
        else {"strategy", "waves", "min_wave_seconds", "max_failure_ratio", "require_healthy"}
    )
    if strategy not in ("all", "staged"):
        raise InvalidRollout("rollout.strategy", f"must be all or staged, got {strategy!r}")
    unknown = set(raw) - allowed
    if unknown:
        raise InvalidRollout(f"rollout.{sorted(unknown)[0]}", f"unknown field for strategy {strategy}")
    if strategy == "all":
        return ALL_AT_ONCE
    waves = _waves(raw.get("waves", list(DEFAULT_WAVES)))
    seconds = _number(raw.get("min_wave_seconds", DEFAULT_MIN_WAVE_SECONDS))
    if seconds is None or not 0 <= seconds <= MAX_MIN_WAVE_SECONDS:
        raise InvalidRollout(
            "rollout.min_wave_seconds", f"must be a number of seconds from 0 to {MAX_MIN_WAVE_SECONDS}"
        )
    ratio = _number(raw.get("max_failure_ratio", DEFAULT_MAX_FAILURE_RATIO))
    if ratio is None or not 0 <= ratio <= 1:
        raise InvalidRollout("rollout.max_failure_ratio", "must be a number from 0 to 1")
    healthy = raw.get("require_healthy", True)
    if not isinstance(healthy, bool):
        raise InvalidRollout("rollout.require_healthy", "must be true or false")
    return RolloutStrategy(
        staged=True, waves=waves, min_wave_seconds=seconds, max_failure_ratio=ratio, require_healthy=healthy
    )


def position(uid: bytes, version: int) -> float:
    """The agent's fixed place in [0, 1) for this version of a config: the same on every node."""
    digest = hashlib.sha256(version.to_bytes(8, "big") + uid).digest()
    return int.from_bytes(digest[:8], "big") / _SCALE


def cutoff_for(wave: Wave, positions: Sequence[float], previous: float = 0.0) -> float:
    """The cutoff of `wave`: agents with position below it are in this wave or an earlier one.
    `positions` are those of the agents targeted now (a count wave needs them); a wave never
    shrinks below the `previous` wave's cutoff."""
    if wave.percent is not None:
        cutoff = wave.percent / 100.0
    else:
        assert wave.count is not None
        ordered = sorted(positions)
        cutoff = 1.0 if wave.count >= len(ordered) else math.nextafter(ordered[wave.count - 1], 1.0)
    return max(cutoff, previous)


def in_wave(uid: bytes, version: int, cutoff: float) -> bool:
    return position(uid, version) < cutoff


def wants_new_version(state: RolloutState, uid: bytes, version: int, cutoff: float) -> bool:
    """Whether an agent the config targets should have the rollout's new version (else the previous
    one): everyone once completed, no one once halted or rolled back, its wave's say otherwise."""
    if state == "completed":
        return True
    if state in ("halted", "rolled_back"):
        return False
    return in_wave(uid, version, cutoff)


def failure_ratio(targeted: int, failed: int, unhealthy: int, require_healthy: bool) -> float:
    """The share of the wave's targeted agents that count against it (0 when it targets none)."""
    if targeted <= 0:
        return 0.0
    bad = failed + (unhealthy if require_healthy else 0)
    return min(bad, targeted) / targeted


Step = Literal["wait", "advance", "complete", "halt"]


def next_step(
    strategy: RolloutStrategy,
    wave: int,
    wave_started_at: float,
    now: float,
    *,
    targeted: int,
    applied: int,
    failed: int,
    unhealthy: int,
) -> Step:
    """What a progressing rollout does next, given the agents its waves so far gave the new version:
    `targeted` of them, `applied` reported applying it, `failed` reported it FAILED, `unhealthy` are
    unhealthy after applying. Halts as soon as the failure ratio is over the limit; moves on once
    every targeted agent has reported (failures within the limit included) and the wave has been good
    for min_wave_seconds; completes after the last wave."""
    if failure_ratio(targeted, failed, unhealthy, strategy.require_healthy) > strategy.max_failure_ratio:
        return "halt"
    if applied + failed < targeted or now - wave_started_at < strategy.min_wave_seconds:
        return "wait"
    return "complete" if wave >= len(strategy.waves) - 1 else "advance"
