"""The packages of the SQLite store: the `packages`, `package_versions` and `package_rollouts` tables
(schema version 11; sqlite_versioned.py holds what they share with configs)."""

from __future__ import annotations

from gateway.fleet.packages import Package, PackageVersion, spec_from_json, spec_json
from gateway.store.sqlite_versioned import Kind

PACKAGES: Kind[Package, PackageVersion] = Kind(
    what="package",
    table="packages",
    versions_table="package_versions",
    rollouts_table="package_rollouts",
    spec_json=spec_json,
    spec_from_json=spec_from_json,
    make=Package,
    make_version=PackageVersion,
)
