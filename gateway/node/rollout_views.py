"""What the config cache needs of the stored rollout records: one RolloutView per config whose
current version is in a rollout that is not completed (a completed one gives everyone the config as
it is). The previous version comes from the config's stored versions; if it is no longer kept, the
agents outside the waves get nothing from the config until their wave.

A staged config whose current version needs a rollout (rollout_steps.staging) but has no record of it
yet -- the moment between the admin API's two writes, or a node that died between them -- is seen as
a rollout at cutoff 0: every agent keeps the previous version until the controller starts it."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from gateway.fleet.configs import Config
from gateway.fleet.desired import RolloutView
from gateway.fleet.rollout_record import Rollout
from gateway.fleet.rollout_steps import staging
from gateway.fleet.versions import ConfigVersion


class RolloutSource(Protocol):
    async def list_rollouts(self) -> list[Rollout]: ...

    async def config_versions(self, name: str) -> list[ConfigVersion]: ...


async def rollout_views(source: RolloutSource, configs: Sequence[Config]) -> dict[str, RolloutView]:
    records = {r.name: r for r in await source.list_rollouts()}
    views: dict[str, RolloutView] = {}
    for config in configs:
        record = records.get(config.name)
        if record is not None and record.version == config.version:
            if record.state == "completed":
                continue
            kept = [] if record.previous_version is None else await source.config_versions(config.name)
            previous = _kept(config.name, kept, record.previous_version)
            views[config.name] = RolloutView(record.version, previous, record.state, record.cutoff)
        elif config.spec.rollout.staged:
            kept = await source.config_versions(config.name)
            staged = staging(config, kept, record)
            if staged is not None:
                previous = _kept(config.name, kept, staged.previous_version)
                views[config.name] = RolloutView(config.version, previous, "progressing", 0.0)
    return views


def _kept(name: str, kept: Sequence[ConfigVersion], version: int | None) -> Config | None:
    entry = next((v for v in kept if v.version == version), None)
    if entry is None:
        return None
    return Config(name, entry.spec, entry.version, entry.created_at, entry.created_at, entry.hash)
