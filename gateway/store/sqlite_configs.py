"""The configs of the SQLite store: the `configs`, `config_versions` and `rollouts` tables
(sqlite_versioned.py holds what they share with packages)."""

from __future__ import annotations

from gateway.fleet.configs import Config, spec_from_json, spec_json
from gateway.fleet.versions import ConfigVersion
from gateway.store.sqlite_versioned import Kind

CONFIGS: Kind[Config, ConfigVersion] = Kind(
    what="config",
    table="configs",
    versions_table="config_versions",
    rollouts_table="rollouts",
    spec_json=spec_json,
    spec_from_json=spec_from_json,
    make=Config,
    make_version=ConfigVersion,
)
