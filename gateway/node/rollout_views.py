"""What the config cache needs of the stored rollout records: one RolloutView per config whose
current version is in a rollout that is not completed (a completed one gives everyone the config as
it is). The previous version comes from the config's stored versions; if it is no longer kept, the
agents outside the waves get nothing from the config until their wave."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from gateway.fleet.configs import Config
from gateway.fleet.desired import RolloutView
from gateway.fleet.rollout_record import Rollout
from gateway.fleet.versions import ConfigVersion


class RolloutSource(Protocol):
    async def list_rollouts(self) -> list[Rollout]: ...

    async def config_versions(self, name: str) -> list[ConfigVersion]: ...


async def rollout_views(source: RolloutSource, configs: Sequence[Config]) -> dict[str, RolloutView]:
    records = await source.list_rollouts()
    if not records:
        return {}
    current = {c.name: c.version for c in configs}
    views: dict[str, RolloutView] = {}
    for record in records:
        if record.state == "completed" or current.get(record.name) != record.version:
            continue
        previous = None
        if record.previous_version is not None:
            kept = await source.config_versions(record.name)
            previous = next(
                (_config(record.name, v) for v in kept if v.version == record.previous_version), None
            )
        views[record.name] = RolloutView(record.version, previous, record.state, record.cutoff)
    return views


def _config(name: str, version: ConfigVersion) -> Config:
    return Config(name, version.spec, version.version, version.created_at, version.created_at, version.hash)
