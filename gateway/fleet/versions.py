"""Config versions: the history a store keeps of each config, for the admin API and rollbacks.

Every change of a config's content (a PUT whose spec hashes differently) stores version N+1 next to
the config; a store keeps the newest `KEEP_VERSIONS` of them and forgets a config's history when the
config is deleted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.fleet.configs import Config, ConfigSpec
from gateway.fleet.render import timestamp

KEEP_VERSIONS = 20


@dataclass(frozen=True, slots=True)
class ConfigVersion:
    """One stored version of a config: its spec as it was, and when it was stored."""

    version: int
    hash: str
    created_at: float
    spec: ConfigSpec


def version_of(config: Config) -> ConfigVersion:
    """The history entry a store writes along with `config`."""
    return ConfigVersion(
        version=config.version, hash=config.hash, created_at=config.updated_at, spec=config.spec
    )


def oldest_kept(version: int) -> int:
    """The oldest version a store keeps once `version` is stored."""
    return max(1, version - KEEP_VERSIONS + 1)


def version_json(entry: ConfigVersion) -> dict[str, Any]:
    """A version as `GET /api/v1/configs/{name}/versions` lists it (files stay out: GET the config)."""
    return {
        "version": entry.version,
        "hash": entry.hash,
        "created_at": timestamp(entry.created_at),
        "priority": entry.spec.priority,
        "selector": entry.spec.selector.to_json(),
        "files": sorted(name for name, _ in entry.spec.files),
    }
