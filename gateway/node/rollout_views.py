"""What the config cache needs of the stored rollout records: one RolloutView per config (or package)
whose current version is in a rollout that is not completed (a completed one gives everyone the item
as it is). The previous version comes from the item's stored versions; if it is no longer kept, the
agents outside the waves get nothing from the item until their wave.

A staged item whose current version needs a rollout (rollout_steps.staging) but has no record of it
yet -- the moment between the admin API's two writes, or a node that died between them -- is seen as
a rollout at cutoff 0: every agent keeps the previous version until the controller starts it."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol, TypeVar

from gateway.fleet.configs import Config
from gateway.fleet.desired import RolloutView
from gateway.fleet.packages import Package, PackageVersion, restored
from gateway.fleet.rollout_record import Rollout
from gateway.fleet.rollout_steps import Kept, Staged, staging
from gateway.fleet.versions import ConfigVersion


class RolloutSource(Protocol):
    async def list_rollouts(self) -> list[Rollout]: ...

    async def config_versions(self, name: str) -> list[ConfigVersion]: ...


class PackageRolloutSource(Protocol):
    async def list_package_rollouts(self) -> list[Rollout]: ...

    async def package_versions(self, name: str) -> list[PackageVersion]: ...


class _Item(Staged, Protocol):
    @property
    def hash(self) -> str: ...


Item = TypeVar("Item", bound=_Item)
Version = TypeVar("Version", bound=Kept)


async def views(
    records: Sequence[Rollout],
    items: Sequence[Item],
    versions: Callable[[str], Awaitable[Sequence[Version]]],
    restore: Callable[[str, Version], Item],
) -> dict[str, RolloutView[Item]]:
    """The views of `items` given their rollout `records`; `versions(name)` reads an item's kept
    versions, `restore(name, version)` makes the item as it was at a kept version."""
    by_name = {r.name: r for r in records}
    out: dict[str, RolloutView[Item]] = {}
    for item in items:
        record = by_name.get(item.name)
        if record is not None and record.version == item.version:
            if record.state == "completed":
                continue
            kept = [] if record.previous_version is None else await versions(item.name)
            previous = _kept(item.name, kept, record.previous_version, restore)
            out[item.name] = RolloutView(record.version, previous, record.state, record.cutoff)
        elif item.spec.rollout.staged:
            kept = await versions(item.name)
            staged = staging(item, kept, record)
            if staged is not None:
                previous = _kept(item.name, kept, staged.previous_version, restore)
                out[item.name] = RolloutView(item.version, previous, "progressing", 0.0)
    return out


def _kept(
    name: str, kept: Sequence[Version], version: int | None, restore: Callable[[str, Version], Item]
) -> Item | None:
    entry = next((v for v in kept if v.version == version), None)
    return None if entry is None else restore(name, entry)


def _config(name: str, entry: ConfigVersion) -> Config:
    return Config(name, entry.spec, entry.version, entry.created_at, entry.created_at, entry.hash)


async def rollout_views(source: RolloutSource, configs: Sequence[Config]) -> dict[str, RolloutView[Config]]:
    return await views(await source.list_rollouts(), configs, source.config_versions, _config)


async def package_rollout_views(
    source: PackageRolloutSource, packages: Sequence[Package]
) -> dict[str, RolloutView[Package]]:
    return await views(await source.list_package_rollouts(), packages, source.package_versions, restored)
