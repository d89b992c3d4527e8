"""The rollout controller: every node runs one, and the stores' compare-and-set makes exactly one
node's change of a given rollout revision count.

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
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Literal, Protocol

from gateway.fleet.agent import facts
from gateway.fleet.configs import Config
from gateway.fleet.desired import ConfigSet
from gateway.fleet.rollout import config_sync, counted
from gateway.fleet.rollout_record import Rollout
from gateway.fleet.rollout_steps import (
    AgentReport,
    RolloutConflict,
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
from gateway.fleet.versions import ConfigVersion
from gateway.fleet.waves import ROLLOUT_STATES
from gateway.metrics import Metrics
from gateway.node.rollout_views import rollout_views
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
    ) -> None:
        self._store = store
        self._on_change = on_change
        self._metrics = metrics
        self._offline_after = offline_after
        self._clock = clock
        self._timer = Periodic("rollouts", interval, self._on_timer)

    async def start(self) -> None:
        self._timer.start()

    async def stop(self) -> None:
        await self._timer.stop()

    async def _on_timer(self) -> None:
        try:
            await self.tick()
        except StoreError as exc:
            logger.warning("rollout controller: store unavailable, trying again next time: %s", exc)

    async def tick(self) -> int:
        """Start what is due, advance every progressing rollout one step; how many records changed."""
        configs = {c.name: c for c in await self._store.list_configs()}
        records = {r.name: r for r in await self._store.list_rollouts()}
        for state in ROLLOUT_STATES:
            self._metrics.rollouts.labels(state=state).set(sum(r.state == state for r in records.values()))
        written = 0
        for name, config in configs.items():
            record = records.get(name)
            if record is None or record.version < config.version:
                written += await self.begin(config) is not None
            elif record.version == config.version and record.state == "progressing":
                written += await self._advance(config)
        return written

    async def begin(self, config: Config) -> Rollout | None:
        """Start the rollout of a staged config's current version, unless it needs none or one is
        stored already; the record written, else None."""
        if not config.spec.rollout.staged:
            return None
        for _ in range(_ATTEMPTS):
            stored = await self._store.get_rollout(config.name)
            if stored is not None and stored.rollout.version >= config.version:
                return None
            kept = await self._store.config_versions(config.name)
            staged = staging(config, kept, None if stored is None else stored.rollout)
            if staged is None:
                return None
            positions: list[float] = []
            if config.spec.rollout.waves[0].count is not None:
                reports = await self._reports(config, await self._config_set())
                positions = positions_of((r.uid for r in reports), config.version)
            record = start(
                config.name,
                config.version,
                staged.previous_version,
                config.spec.rollout,
                self._clock(),
                positions,
            )
            if await self._write(record, stored):
                return record
        return None

    async def _advance(self, config: Config) -> int:
        stored = await self._store.get_rollout(config.name)
        if stored is None or stored.rollout.version != config.version:
            return 0
        survey = Survey(stored.rollout, await self._reports(config, await self._config_set()))
        positions = positions_of((r.uid for r in survey.reports), config.version)
        moved = step(survey.rollout, survey.counts, self._clock(), positions)
        if moved is None:
            return 0
        return int(await self._write(moved, stored))

    async def survey(self, name: str) -> Survey:
        """The rollout of the config's current version (NoRollout if none) and its agents now."""
        config = await self._store.get_config(name)
        if config is None:
            raise NoRollout(f"no config {name!r}")
        stored = await self._store.get_rollout(name)
        if stored is None or stored.rollout.version != config.version:
            raise NoRollout(f"config {name!r} has no rollout of its version {config.version}")
        return Survey(stored.rollout, await self._reports(config, await self._config_set()))

    async def act(self, name: str, action: Action, version: int | None = None) -> Rollout:
        """Pause, resume or roll back the rollout of the config's current version. RolloutConflict
        when the action does not apply (or `version` is not kept), NoRollout, RolloutBusy."""
        for _ in range(_ATTEMPTS):
            config = await self._store.get_config(name)
            stored = await self._store.get_rollout(name)
            if config is None or stored is None or stored.rollout.version != config.version:
                raise NoRollout(f"config {name!r} has no rollout of its current version")
            now = self._clock()
            if action == "pause":
                moved = pause(stored.rollout, now)
            elif action == "resume":
                moved = resume(stored.rollout, now)
            else:
                if version is not None:
                    kept = {v.version for v in await self._store.config_versions(name)}
                    if version not in kept:
                        raise RolloutConflict(f"version {version} of {name!r} is not kept (see its versions)")
                moved = rollback(stored.rollout, now, version)
            if await self._write(moved, stored):
                return moved
        raise RolloutBusy(f"the rollout of {name!r} kept changing: try again")

    async def _write(self, record: Rollout, stored: StoredRollout | None) -> bool:
        """Compare-and-set `record` over `stored`; on success log, count and tell every node."""
        if await self._store.put_rollout(record, None if stored is None else stored.rev) is None:
            return False
        reason = record.events[-1].reason if record.events else record.state
        # A halt is the gateway undoing a change on its own: worth a warning.
        logger.log(
            logging.WARNING if record.state == "halted" else logging.INFO,
            "rollout of config %s version %d: %s (wave %d): %s",
            record.name,
            record.version,
            record.state,
            record.wave + 1,
            reason,
        )
        self._metrics.rollout_changes.labels(state=record.state).inc()
        await self._on_change(f"rollout of {record.name} v{record.version} {record.state}")
        return True

    async def _config_set(self) -> ConfigSet:
        configs = await self._store.list_configs()
        return ConfigSet(tuple(configs), rollouts=await rollout_views(self._store, configs))

    async def _reports(self, config: Config, configs: ConfigSet) -> tuple[AgentReport, ...]:
        """The connected agents the config's current version targets that take remote configs, with
        their config status against what they should have now, and their health."""
        reports: list[AgentReport] = []
        query = AgentQuery(selector=config.selector, limit=MAX_PAGE_SIZE)
        now = self._clock()
        while True:
            page = await self._store.list_agents(query, now, self._offline_after)
            for state in page.agents:
                if not counted(state, now, self._offline_after):
                    continue
                status = config_sync(state, configs).status
                if status not in ("unsupported", "none"):
                    reports.append(AgentReport(state.instance_uid, status, facts(state).healthy))
            if page.next_cursor is None:
                return tuple(reports)
            query = replace(query, cursor=page.next_cursor)
