"""Where an agent stands with a package it should have, counts of that over a package's agents, and the
terms the stores index to filter agents by it.

An agent's status for one package it should have (the revision this node resolves for it now,
package_set.py), from what the agent last reported in its PackageStatuses (ReportsPackageStatuses):

- `installed`: it reports Installed with `agent_has_hash` the package's hash;
- `installing`: it reports InstallPending, Downloading or Installing with `server_offered_hash` the
  package's hash;
- `failed`: it reports InstallFailed with `server_offered_hash` the package's hash;
- `pending`: anything else (not offered yet, offered and not reported on yet, or an agent without
  ReportsPackageStatuses, which never says);
- `unsupported`: the package applies, but the agent lacks AcceptsPackages;
- `none`: the package gives the agent nothing now (its selector does not match, a package of the
  same package_name with a higher priority wins, or the package's first revision has not reached the
  agent's wave).

The statuses depend on the reports alone (and the hash), so the stores can filter by them: each
record is indexed with one term per reported package, `<name>/<installed|installing|failed>/<hash
hex>` (`package_terms`), and `GET /api/v1/agents?package=NAME&package_status=...` asks for the terms
of the hashes the package may be offered as now, then checks each agent exactly.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from gateway.fleet.agent import AgentState
from gateway.fleet.package_set import DesiredPackage, PackageSet
from gateway.fleet.status import derive_status
from gateway.proto import opamp_pb2 as pb

PackageSyncStatus = Literal["installed", "installing", "failed", "pending", "unsupported", "none"]
PACKAGE_STATUSES: tuple[PackageSyncStatus, ...] = (
    "installed",
    "installing",
    "failed",
    "pending",
    "unsupported",
    "none",
)
# The statuses a reported PackageStatus says on its own, and the ones the stores index.
REPORTED_STATUSES: tuple[PackageSyncStatus, ...] = ("installed", "installing", "failed")
_REPORTED: dict[int, PackageSyncStatus] = {
    pb.PackageStatusEnum_Installed: "installed",
    pb.PackageStatusEnum_InstallPending: "installing",
    pb.PackageStatusEnum_Installing: "installing",
    pb.PackageStatusEnum_Downloading: "installing",
    pb.PackageStatusEnum_InstallFailed: "failed",
}
STATUS_NAMES: dict[int, str] = {
    pb.PackageStatusEnum_Installed: "INSTALLED",
    pb.PackageStatusEnum_InstallPending: "INSTALL_PENDING",
    pb.PackageStatusEnum_Installing: "INSTALLING",
    pb.PackageStatusEnum_InstallFailed: "INSTALL_FAILED",
    pb.PackageStatusEnum_Downloading: "DOWNLOADING",
}
ACCEPTS_PACKAGES = pb.AgentCapabilities_AcceptsPackages
REPORTS_PACKAGE_STATUSES = pb.AgentCapabilities_ReportsPackageStatuses
# The most terms one record is indexed with, and the longest package name indexed: the reports are
# the agent's bytes.
MAX_TERMS = 256
MAX_TERM_NAME = 128


def term(package_name: str, status: str, hash_: bytes) -> str:
    return f"{package_name}/{status}/{hash_.hex()}"


def reported_status(status: pb.PackageStatus) -> tuple[PackageSyncStatus, bytes] | None:
    """What one reported PackageStatus says on its own: (status, the hash it is about), or None."""
    said = _REPORTED.get(status.status)
    if said is None:
        return None
    hash_: bytes = status.agent_has_hash if said == "installed" else status.server_offered_hash
    return (said, hash_) if hash_ else None


def package_terms(statuses: bytes | None) -> list[str]:
    """The terms a record with these reported PackageStatuses is indexed with (sorted, bounded)."""
    if statuses is None:
        return []
    found: set[str] = set()
    for name, status in pb.PackageStatuses.FromString(statuses).packages.items():
        said = reported_status(status)
        if said is not None and 0 < len(name) <= MAX_TERM_NAME:
            found.add(term(name, *said))
    return sorted(found)[:MAX_TERMS]


def entry_status(
    state: AgentState, desired: DesiredPackage, reported: pb.PackageStatuses | None
) -> PackageSyncStatus:
    """The agent's status for one package it should have."""
    if not state.capabilities & ACCEPTS_PACKAGES:
        return "unsupported"
    if reported is not None and desired.package_name in reported.packages:
        said = reported_status(reported.packages[desired.package_name])
        if said is not None and said[1] == desired.hash:
            return said[0]
    return "pending"


def _statuses(state: AgentState) -> pb.PackageStatuses | None:
    return None if state.package_statuses is None else pb.PackageStatuses.FromString(state.package_statuses)


@dataclass(frozen=True, slots=True)
class PackageSync:
    """The agent's status for one stored package, and what it should have from it (None: nothing)."""

    status: PackageSyncStatus
    desired: DesiredPackage | None


def package_sync(state: AgentState, packages: PackageSet, name: str) -> PackageSync:
    """The agent's status for the stored package `name`."""
    package = packages.by_name(name)
    desired = packages.desired_for(state)
    if package is None or desired is None:
        return PackageSync("none", None)
    version, _ = packages.version_for(package, state.instance_uid)
    entry = None if version is None else desired.get(version.spec.package_name)
    if entry is None or entry.source != name:
        return PackageSync("none", None)
    return PackageSync(entry_status(state, entry, _statuses(state)), entry)


def packages_sync_json(state: AgentState, packages: PackageSet) -> dict[str, Any] | None:
    """The agent's `package_sync`: the packages it should have now, each with its status (None: the
    node knows no package)."""
    if not packages:
        return None
    desired = packages.desired_for(state)
    reported = _statuses(state)
    return {
        "all_packages_hash": None if desired is None else desired.hash.hex(),
        "packages": {
            d.package_name: {
                "package": d.source,
                "revision": d.revision,
                "version": d.package_version,
                "hash": d.hash.hex(),
                "status": entry_status(state, d, reported),
            }
            for d in ([] if desired is None else desired.packages)
        },
    }


def package_statuses_json(data: bytes, offered: bytes | None) -> dict[str, Any]:
    """The agent's last PackageStatuses as the admin API shows it, with the hash of the offer it last
    got."""
    statuses = pb.PackageStatuses.FromString(data)
    return {
        "server_provided_all_packages_hash": statuses.server_provided_all_packages_hash.hex(),
        "error_message": statuses.error_message,
        "offered_hash": None if offered is None else offered.hex(),
        "packages": {
            name: {
                "status": STATUS_NAMES.get(s.status, str(s.status)),
                "agent_has_version": s.agent_has_version,
                "agent_has_hash": s.agent_has_hash.hex(),
                "server_offered_version": s.server_offered_version,
                "server_offered_hash": s.server_offered_hash.hex(),
                "error_message": s.error_message,
                "download_percent": s.download_details.download_percent,
                "download_bytes_per_second": s.download_details.download_bytes_per_second,
            }
            for name, s in sorted(statuses.packages.items())
        },
    }


def progress_only(before: bytes | None, after: bytes | None) -> bool:
    """Whether two reported PackageStatuses differ in download progress alone."""
    if before is None or after is None:
        return False
    old, new = pb.PackageStatuses.FromString(before), pb.PackageStatuses.FromString(after)
    for statuses in (old, new):
        for status in statuses.packages.values():
            status.ClearField("download_details")
    return bool(old == new)


@dataclass
class PackageCounts:
    """A package's connected agents (those its selector matches) by their status for it, and apart
    from them the matched agents that are offline or disconnected (as a config's RolloutCounts)."""

    matched: int = 0
    by_status: dict[str, int] = dataclasses.field(default_factory=lambda: dict.fromkeys(PACKAGE_STATUSES, 0))
    offline: int = 0
    disconnected: int = 0

    def add(self, sync: PackageSync, state: AgentState, now: float, offline_after: float) -> None:
        status = derive_status(state, None, now, offline_after)
        if status == "disconnected":
            self.disconnected += 1
        elif status == "offline":
            self.offline += 1
        else:
            self.matched += 1
            self.by_status[sync.status] += 1

    def to_json(self) -> dict[str, Any]:
        return {
            "matched": self.matched,
            **self.by_status,
            "offline": self.offline,
            "disconnected": self.disconnected,
        }


# What a rollout counts of an agent (rollout_steps.AgentReport.status), by package status.
ROLLOUT_STATUS: dict[str, str] = {
    "installed": "applied",
    "installing": "applying",
    "failed": "failed",
    "pending": "pending",
}
