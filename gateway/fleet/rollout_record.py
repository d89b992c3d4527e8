"""The stored record of a config's staged rollout, and its JSON form in the stores.

One record per config name, written only by compare-and-set (`Store.put_rollout` with the revision
read last): exactly one node's change of a given revision wins, so two nodes never advance the same
rollout twice. `events` keeps the last MAX_EVENTS state changes, oldest first.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from gateway.fleet.waves import ROLLOUT_STATES, InvalidRollout, RolloutState, RolloutStrategy, parse_strategy

MAX_EVENTS = 50


class UnreadableRollout(ValueError):
    """A stored rollout record this gateway cannot read."""


@dataclass(frozen=True, slots=True)
class RolloutEvent:
    at: float
    state: RolloutState
    wave: int
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"at": self.at, "state": self.state, "wave": self.wave, "reason": self.reason}


@dataclass(frozen=True, slots=True)
class Rollout:
    """A config's rollout of `version`; agents outside its waves keep `previous_version`."""

    name: str
    version: int
    previous_version: int | None
    state: RolloutState
    strategy: RolloutStrategy
    # Index into strategy.waves, and the cutoff (waves.py) it stands at.
    wave: int
    cutoff: float
    started_at: float
    updated_at: float
    wave_started_at: float
    events: tuple[RolloutEvent, ...] = ()

    def moved(self, now: float, state: RolloutState, reason: str, **changes: Any) -> Rollout:
        """This rollout after a change at `now`, with an event recording it."""
        wave = changes.get("wave", self.wave)
        event = RolloutEvent(at=now, state=state, wave=wave, reason=reason)
        return replace(
            self, state=state, updated_at=now, events=(*self.events, event)[-MAX_EVENTS:], **changes
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "previous_version": self.previous_version,
            "state": self.state,
            "strategy": self.strategy.to_json(),
            "wave": self.wave,
            "cutoff": self.cutoff,
            "started_at": self.started_at,
            "updated_at": self.updated_at,
            "wave_started_at": self.wave_started_at,
            "events": [e.to_json() for e in self.events],
        }


def _state(value: object) -> RolloutState:
    for state in ROLLOUT_STATES:
        if value == state:
            return state
    raise UnreadableRollout(f"unknown rollout state {value!r}")


def rollout_from_json(raw: Any) -> Rollout:
    """The inverse of Rollout.to_json; UnreadableRollout for anything else."""
    try:
        previous = raw["previous_version"]
        return Rollout(
            name=str(raw["name"]),
            version=int(raw["version"]),
            previous_version=None if previous is None else int(previous),
            state=_state(raw["state"]),
            strategy=parse_strategy(raw["strategy"]),
            wave=int(raw["wave"]),
            cutoff=float(raw["cutoff"]),
            started_at=float(raw["started_at"]),
            updated_at=float(raw["updated_at"]),
            wave_started_at=float(raw["wave_started_at"]),
            events=tuple(
                RolloutEvent(
                    at=float(e["at"]), state=_state(e["state"]), wave=int(e["wave"]), reason=str(e["reason"])
                )
                for e in raw["events"]
            ),
        )
    except UnreadableRollout:
        raise
    except (KeyError, TypeError, ValueError, InvalidRollout) as exc:
        raise UnreadableRollout(f"not a rollout record of this gateway: {exc!r}") from None
