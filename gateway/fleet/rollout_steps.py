"""How a rollout record moves: pure functions from a record (and what the fleet reports) to the next
record, for the controller loop and the admin API to write by compare-and-set.

    staging    whether a config's current version is rolled out in waves, and from which version
    start      a new version of a staged config: progressing at wave 0
    step       a progressing rollout after counting its wave: wait (None), next wave, completed, or
               halted (failure ratio over the limit; agents are offered the previous version again)
    pause / resume / rollback   the operator's actions (RolloutConflict when they make no sense)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.fleet.rollout_record import Rollout
from gateway.fleet.waves import RolloutStrategy, cutoff_for, in_wave, next_step, position


class StagedSpec(Protocol):
    """What staging needs of a config's (or a package's) spec."""

    @property
    def rollout(self) -> RolloutStrategy: ...

    def same_content(self, other: Any) -> bool: ...


class Staged(Protocol):
    """A config or a package: its name, current version (a package's revision) and spec."""

    @property
    def name(self) -> str: ...

    @property
    def version(self) -> int: ...

    @property
    def spec(self) -> StagedSpec: ...


class Kept(Protocol):
    """One stored version of a config or a package."""

    @property
    def version(self) -> int: ...

    @property
    def spec(self) -> StagedSpec: ...


class RolloutConflict(ValueError):
    """An operator action that does not apply to the rollout's state (409)."""


@dataclass(frozen=True, slots=True)
class AgentReport:
    """What counts of one agent the config targets: its config status against the new version
    (`applied`, `applying`, `failed`, `pending`, ...) and its health (None: not reported)."""

    uid: bytes
    status: str
    healthy: bool | None


@dataclass(frozen=True, slots=True)
class WaveCounts:
    """The agents a rollout's waves have given the new version so far, by what they report."""

    targeted: int = 0
    applied: int = 0
    applying: int = 0
    failed: int = 0
    unhealthy: int = 0
    pending: int = 0


def wave_counts(rollout: Rollout, agents: Iterable[AgentReport]) -> WaveCounts:
    """Count the agents inside the rollout's current cutoff. Unhealthy counts agents that applied the
    new version and then report unhealthy."""
    targeted = applied = applying = failed = unhealthy = pending = 0
    for agent in agents:
        if not in_wave(agent.uid, rollout.version, rollout.cutoff):
            continue
        targeted += 1
        if agent.status == "applied":
            applied += 1
            unhealthy += agent.healthy is False
        elif agent.status == "failed":
            failed += 1
        elif agent.status == "applying":
            applying += 1
        else:
            pending += 1
    return WaveCounts(targeted, applied, applying, failed, unhealthy, pending)


@dataclass(frozen=True, slots=True)
class Staging:
    """A staged config's current version that needs a rollout, and the version the agents outside
    its waves keep (None: there is none, they get nothing from the config until their wave)."""

    version: int
    previous_version: int | None


def staging(config: Staged, kept: Sequence[Kept], record: Rollout | None) -> Staging | None:
    """Whether `config` (its current version) is rolled out in waves: its strategy is staged and the
    agents would get something new from it. The version the others keep is the last good one: an
    unfinished rollout's own previous version (a halted or rolled-back one's is the version it went
    back to), else the newest older version kept. Content equal to that one needs no rollout; a
    change of the strategy alone during a rollout restarts it at wave 0 of the new strategy."""
    if not config.spec.rollout.staged:
        return None
    unfinished = record is not None and record.version < config.version and record.state != "completed"
    if record is not None and unfinished:
        base = record.previous_version
    else:
        base = max((v.version for v in kept if v.version < config.version), default=None)
    previous = next((v for v in kept if v.version == base), None)
    if previous is not None and previous.spec.same_content(config.spec):
        return None
    return Staging(config.version, base)


def start(
    name: str,
    version: int,
    previous_version: int | None,
    strategy: RolloutStrategy,
    now: float,
    positions: Sequence[float],
    unit: str = "version",
) -> Rollout:
    """The rollout of a new version: progressing, wave 0. `positions` are those (waves.position) of
    the agents the new version targets now; a count wave needs them. `unit` names a version in the
    events' reasons (a package's versions are its revisions)."""
    return Rollout(
        name=name,
        version=version,
        previous_version=previous_version,
        state="progressing",
        strategy=strategy,
        wave=0,
        cutoff=cutoff_for(strategy.waves[0], positions),
        started_at=now,
        updated_at=now,
        wave_started_at=now,
    ).moved(now, "progressing", f"{unit} {version} started, wave 1 of {len(strategy.waves)}")


def positions_of(uids: Iterable[bytes], version: int) -> list[float]:
    return [position(uid, version) for uid in uids]


def step(
    rollout: Rollout, counts: WaveCounts, now: float, positions: Sequence[float], unit: str = "version"
) -> Rollout | None:
    """The next record of a progressing rollout, or None while it waits."""
    if rollout.state != "progressing":
        return None
    strategy = rollout.strategy
    decided = next_step(
        strategy,
        rollout.wave,
        rollout.wave_started_at,
        now,
        targeted=counts.targeted,
        applied=counts.applied,
        failed=counts.failed,
        unhealthy=counts.unhealthy,
    )
    if decided == "wait":
        return None
    if decided == "halt":
        bad = counts.failed + (counts.unhealthy if strategy.require_healthy else 0)
        limit = strategy.max_failure_ratio
        return rollout.moved(
            now,
            "halted",
            f"{bad} of {counts.targeted} agents failed (over max_failure_ratio {limit}): "
            f"rolled back to {unit} {rollout.previous_version}",
        )
    if decided == "complete":
        return rollout.moved(now, "completed", f"every wave applied {unit} {rollout.version}", cutoff=1.0)
    wave = rollout.wave + 1
    cutoff = cutoff_for(strategy.waves[wave], positions, previous=rollout.cutoff)
    return rollout.moved(
        now,
        "progressing",
        f"wave {wave + 1} of {len(strategy.waves)} started",
        wave=wave,
        cutoff=cutoff,
        wave_started_at=now,
    )


def pause(rollout: Rollout, now: float) -> Rollout:
    if rollout.state != "progressing":
        raise RolloutConflict(
            f"the rollout of {rollout.name!r} is {rollout.state}: only a progressing one pauses"
        )
    return rollout.moved(now, "paused", "paused by the admin API")


def resume(rollout: Rollout, now: float) -> Rollout:
    """Back to progressing; the current wave's min_wave_seconds starts again."""
    if rollout.state != "paused":
        raise RolloutConflict(
            f"the rollout of {rollout.name!r} is {rollout.state}: only a paused one resumes"
        )
    return rollout.moved(now, "progressing", "resumed by the admin API", wave_started_at=now)


def rollback(rollout: Rollout, now: float, version: int | None = None, unit: str = "version") -> Rollout:
    """Every agent is offered the previous version again, or `version` (an older one the caller
    checked is still kept); a halted rollout may be sent back to another version too."""
    target = rollout.previous_version if version is None else version
    if target is None:
        raise RolloutConflict(f"{unit} {rollout.version} of {rollout.name!r} has no previous {unit}")
    if target >= rollout.version:
        raise RolloutConflict(
            f"{unit} {target}: a rollback goes to a {unit} older than {rollout.version}, the one rolled out"
        )
    if rollout.state in ("rolled_back", "halted") and target == rollout.previous_version:
        raise RolloutConflict(
            f"the rollout of {rollout.name!r} is {rollout.state}: its agents have {unit} {target} already"
        )
    return rollout.moved(
        now,
        "rolled_back",
        f"rolled back to {unit} {target} by the admin API",
        previous_version=target,
    )
