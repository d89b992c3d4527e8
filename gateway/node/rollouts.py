"""The rollout controller: every node runs one for configs and one for packages, and the stores'
compare-and-set makes exactly one node's change of a given rollout revision count. What differs
between the two is a `Subject`: where its items, versions and rollout records are stored, and how an
agent's status against an item's version is judged (config status, or package status mapped to the
same applied/applying/failed/pending, gateway/fleet/package_status.py). Everything below speaks of
configs; it holds for packages alike, whose versions are their revisions.

Every `--rollout-interval` seconds a node reads the rollout records and, for each progressing one,
counts the agents its waves gave the new version (rollout_steps.wave_counts) and writes the next
record if there is one (the next wave, completed, or halted: the failure ratio crossed, every agent
offered the previous version again). It also starts the rollout of a staged config's new version
that has no record yet (a node that died between the admin API's two writes). After every write it
re-reads its config cache and publishes ConfigsChanged, so every node resolves the same version per
agent and pushes it to its WebSocket agents. The admin API starts rollouts and pauses, resumes and
rolls them back through the same compare-and-set (`act`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, replace
from typing import Literal, Protocol

from gateway.fleet.agent import AgentState, facts
from gateway.fleet.configs import Config
from gateway.fleet.desired import ConfigSet
from gateway.fleet.package_set import PackageSet
from gateway.fleet.package_status import ROLLOUT_STATUS, package_sync
from gateway.fleet.packages import Package, PackageVersion
from gateway.fleet.rollout import config_sync, counted
from gateway.fleet.rollout_record import Rollout
from gateway.fleet.rollout_steps import (
    AgentReport,
    Kept,
    RolloutConflict,
    Staged,
    WaveCounts,
    pause,
    positions_of,
    resume,
    rollback,
    staging,
    start,
    step,
    wave_counts,
)
from gateway.fleet.selector import Selector
from gateway.fleet.versions import ConfigVersion
from gateway.fleet.waves import ROLLOUT_STATES
from gateway.metrics import Metrics
from gateway.node.rollout_views import package_rollout_views, rollout_views
from gateway.periodic import Periodic
from gateway.store.base import MAX_PAGE_SIZE, AgentPage, AgentQuery, StoredRollout, StoreError

logger = logging.getLogger("gateway.node.rollouts")

Action = Literal["pause", "resume", "rollback"]
# Compare-and-set attempts before an admin action gives up (each loses only to another write).
_ATTEMPTS = 5


class NoRollout(LookupError):
    """No such config, or no rollout of its current version (404)."""


class RolloutBusy(RuntimeError):
    """Other writes kept winning the compare-and-set (409: try again)."""


class RolloutStore(Protocol):
    async def get_config(self, name: str) -> Config | None: ...

    async def list_configs(self) -> list[Config]: ...

    async def config_versions(self, name: str) -> list[ConfigVersion]: ...

    async def get_rollout(self, name: str) -> StoredRollout | None: ...

    async def list_rollouts(self) -> list[Rollout]: ...

    async def put_rollout(self, rollout: Rollout, expected_rev: str | None) -> str | None: ...

    async def list_agents(self, query: AgentQuery, now: float, offline_after: float) -> AgentPage: ...


class PackageRolloutStore(RolloutStore, Protocol):
    async def get_package(self, name: str) -> Package | None: ...

    async def list_packages(self) -> list[Package]: ...

    async def package_versions(self, name: str) -> list[PackageVersion]: ...

    async def get_package_rollout(self, name: str) -> StoredRollout | None: ...

    async def list_package_rollouts(self) -> list[Rollout]: ...

    async def put_package_rollout(self, rollout: Rollout, expected_rev: str | None) -> str | None: ...


class Item(Staged, Protocol):
    """A config or a package, as the controller needs it."""

    @property
    def selector(self) -> Selector: ...


# How an agent stands against an item's current version: applied, applying, failed or pending, or
# None when the rollout does not count it (it does not take the item, or the item gives it nothing).
Judge = Callable[[AgentState, Item], str | None]


class Subject(Protocol):
    """What a rollout controller rolls out: configs or packages."""

    @property
    def what(self) -> str: ...

    @property
    def unit(self) -> str: ...

    async def get(self, name: str) -> Item | None: ...

    async def items(self) -> Sequence[Item]: ...

    async def versions(self, name: str) -> Sequence[Kept]: ...

    async def get_rollout(self, name: str) -> StoredRollout | None: ...

    async def list_rollouts(self) -> list[Rollout]: ...

    async def put_rollout(self, rollout: Rollout, expected_rev: str | None) -> str | None: ...

    async def judge(self) -> Judge:
        """A judge of agents against what every item resolves to now (one store read of them all)."""


class ConfigSubject:
    what = "config"
    unit = "version"

    def __init__(self, store: RolloutStore) -> None:
        self._store = store

    async def get(self, name: str) -> Config | None:
        return await self._store.get_config(name)

    async def items(self) -> list[Config]:
        return await self._store.list_configs()

    async def versions(self, name: str) -> list[ConfigVersion]:
        return await self._store.config_versions(name)

    async def get_rollout(self, name: str) -> StoredRollout | None:
        return await self._store.get_rollout(name)

    async def list_rollouts(self) -> list[Rollout]:
        return await self._store.list_rollouts()

    async def put_rollout(self, rollout: Rollout, expected_rev: str | None) -> str | None:
        return await self._store.put_rollout(rollout, expected_rev)

    async def judge(self) -> Judge:
        configs = await self._store.list_configs()
        resolved = ConfigSet(tuple(configs), rollouts=await rollout_views(self._store, configs))

        def judged(state: AgentState, _item: Item) -> str | None:
            status = config_sync(state, resolved).status
            return None if status in ("unsupported", "none") else status

        return judged


class PackageSubject:
    what = "package"
    unit = "revision"

    def __init__(self, store: PackageRolloutStore) -> None:
        self._store = store

    async def get(self, name: str) -> Package | None:
        return await self._store.get_package(name)

    async def items(self) -> list[Package]:
        return await self._store.list_packages()

    async def versions(self, name: str) -> list[PackageVersion]:
        return await self._store.package_versions(name)

    async def get_rollout(self, name: str) -> StoredRollout | None:
        return await self._store.get_package_rollout(name)

    async def list_rollouts(self) -> list[Rollout]:
        return await self._store.list_package_rollouts()

    async def put_rollout(self, rollout: Rollout, expected_rev: str | None) -> str | None:
        return await self._store.put_package_rollout(rollout, expected_rev)

    async def judge(self) -> Judge:
        packages = await self._store.list_packages()
        resolved = PackageSet(tuple(packages), rollouts=await package_rollout_views(self._store, packages))

        def judged(state: AgentState, item: Item) -> str | None:
            return ROLLOUT_STATUS.get(package_sync(state, resolved, item.name).status)

        return judged


@dataclass(frozen=True, slots=True)
class Survey:
    """A rollout and the connected agents its config's current version targets, as reported now."""

    rollout: Rollout
    reports: tuple[AgentReport, ...]

    @property
    def counts(self) -> WaveCounts:
        return wave_counts(self.rollout, self.reports)


class RolloutController:
    def __init__(
        self,
        store: RolloutStore,
        on_change: Callable[[str], Awaitable[None]],
        metrics: Metrics,
        *,
        interval: float,
        offline_after: float,
        clock: Callable[[], float],
        subject: Subject | None = None,
    ) -> None:
        self._store = store
        # Configs unless told otherwise.
        self._subject: Subject = subject if subject is not None else ConfigSubject(store)
        self._on_change = on_change
        self._metrics = metrics
        if self._subject.what == "config":
            self._states, self._changes = metrics.rollouts, metrics.rollout_changes
        else:
            self._states, self._changes = metrics.package_rollouts, metrics.package_rollout_changes
        self._offline_after = offline_after
        self._clock = clock
        self._timer = Periodic(f"{self._subject.what}-rollouts", interval, self._on_timer)

    @property
    def what(self) -> str:
        """What it rolls out: "config" or "package"."""
        return self._subject.what

    @property
    def unit(self) -> str:
        """What a version of it is called: "version", or a package's "revision"."""
        return self._subject.unit

    async def start(self) -> None:
        self._timer.start()

    async def stop(self) -> None:
        await self._timer.stop()

    async def _on_timer(self) -> None:
        try:
            await self.tick()
        except StoreError as exc:
            logger.warning(
                "%s rollout controller: store unavailable, trying again next time: %s", self.what, exc
            )

    async def tick(self) -> int:
        """Start what is due, advance every progressing rollout one step; how many records changed."""
        items = {c.name: c for c in await self._subject.items()}
        records = {r.name: r for r in await self._subject.list_rollouts()}
        for state in ROLLOUT_STATES:
            self._states.labels(state=state).set(sum(r.state == state for r in records.values()))
        written = 0
        for name, item in items.items():
            record = records.get(name)
            if record is None or record.version < item.version:
                written += await self.begin(item) is not None
            elif record.version == item.version and record.state == "progressing":
                written += await self._advance(item)
        return written

    async def begin(self, config: Item) -> Rollout | None:
        """Start the rollout of a staged config's current version, unless it needs none or one is
        stored already; the record written, else None."""
        strategy = config.spec.rollout
        if not strategy.staged:
            return None
        for _ in range(_ATTEMPTS):
            stored = await self._subject.get_rollout(config.name)
            if stored is not None and stored.rollout.version >= config.version:
                return None
            kept = await self._subject.versions(config.name)
            staged = staging(config, kept, None if stored is None else stored.rollout)
            if staged is None:
                return None
            positions: list[float] = []
            if strategy.waves[0].count is not None:
                reports = await self._reports(config, await self._subject.judge())
                positions = positions_of((r.uid for r in reports), config.version)
            record = start(
                config.name,
                config.version,
                staged.previous_version,
                strategy,
                self._clock(),
                positions,
                self.unit,
            )
            if await self._write(record, stored):
                return record
        return None

    async def _advance(self, config: Item) -> int:
        stored = await self._subject.get_rollout(config.name)
        if stored is None or stored.rollout.version != config.version:
            return 0
        survey = Survey(stored.rollout, await self._reports(config, await self._subject.judge()))
        positions = positions_of((r.uid for r in survey.reports), config.version)
        moved = step(survey.rollout, survey.counts, self._clock(), positions, self.unit)
        if moved is None:
            return 0
        return int(await self._write(moved, stored))

    async def survey(self, name: str) -> Survey:
        """The rollout of the config's current version (NoRollout if none) and its agents now."""
        config = await self._subject.get(name)
        if config is None:
            raise NoRollout(f"no {self.what} {name!r}")
        stored = await self._subject.get_rollout(name)
        if stored is None or stored.rollout.version != config.version:
            raise NoRollout(f"{self.what} {name!r} has no rollout of its {self.unit} {config.version}")
        return Survey(stored.rollout, await self._reports(config, await self._subject.judge()))

    async def act(self, name: str, action: Action, version: int | None = None) -> Rollout:
        """Pause, resume or roll back the rollout of the config's current version. RolloutConflict
        when the action does not apply (or `version` is not kept), NoRollout, RolloutBusy."""
        for _ in range(_ATTEMPTS):
            config = await self._subject.get(name)
            stored = await self._subject.get_rollout(name)
            if config is None or stored is None or stored.rollout.version != config.version:
                raise NoRollout(f"{self.what} {name!r} has no rollout of its current {self.unit}")
            now = self._clock()
            if action == "pause":
                moved = pause(stored.rollout, now)
            elif action == "resume":
                moved = resume(stored.rollout, now)
            else:
                if version is not None:
                    kept = {v.version for v in await self._subject.versions(name)}
                    if version not in kept:
                        raise RolloutConflict(
                            f"{self.unit} {version} of {name!r} is not kept (see its versions)"
                        )
                moved = rollback(stored.rollout, now, version, self.unit)
            if await self._write(moved, stored):
                return moved
        raise RolloutBusy(f"the rollout of {name!r} kept changing: try again")

    async def _write(self, record: Rollout, stored: StoredRollout | None) -> bool:
        """Compare-and-set `record` over `stored`; on success log, count and tell every node."""
        if await self._subject.put_rollout(record, None if stored is None else stored.rev) is None:
            return False
        reason = record.events[-1].reason if record.events else record.state
        # A halt is the gateway undoing a change on its own: worth a warning.
        logger.log(
            logging.WARNING if record.state == "halted" else logging.INFO,
            "rollout of %s %s %s %d: %s (wave %d): %s",
            self.what,
            record.name,
            self.unit,
            record.version,
            record.state,
            record.wave + 1,
            reason,
        )
        self._changes.labels(state=record.state).inc()
        prefix = "" if self.what == "config" else f"{self.what} "
        await self._on_change(f"rollout of {prefix}{record.name} v{record.version} {record.state}")
        return True

    async def _reports(self, config: Item, judge: Judge) -> tuple[AgentReport, ...]:
        """The connected agents the config's current version targets that take it, with their status
        against what they should have now, and their health."""
        reports: list[AgentReport] = []
        query = AgentQuery(selector=config.selector, limit=MAX_PAGE_SIZE)
        now = self._clock()
        while True:
            page = await self._store.list_agents(query, now, self._offline_after)
            for state in page.agents:
                if not counted(state, now, self._offline_after):
                    continue
                status = judge(state, config)
                if status is not None:
                    reports.append(AgentReport(state.instance_uid, status, facts(state).healthy))
            if page.next_cursor is None:
                return tuple(reports)
            query = replace(query, cursor=page.next_cursor)
