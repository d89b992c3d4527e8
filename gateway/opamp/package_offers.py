"""When an agent is offered `packages_available`, and what its PackageStatuses reports change (spec
§Packages). Pure, like the engine that calls it.

The rules mirror the remote-config ones (engine.config_to_offer, docs/remote-config.md §4):

1. Only to agents with AcceptsPackages.
2. Only when the agent's desired packages (package_set.py) have another `all_packages_hash` than
   the one it holds: the `server_provided_all_packages_hash` of its last PackageStatuses (spec:
   the server SHOULD resend on a mismatch), or, for an agent without ReportsPackageStatuses (it never
   reports), the hash last offered to it: it gets each change once.
3. No loops. Once offered, an offer of the same hash is not made again until `config_resend_after`
   passes (a reply lost on the way), or a report names another all-packages hash than the agent's
   report before it (it moved on: offered again, once), or a new connection (an offer made on an
   older one may never have arrived), these only for agents with ReportsPackageStatuses. A report
   whose packages failed still names the offer's hash, so failures are never offered again in a loop.
4. When no package applies to an agent any more, the empty offer (EMPTY_ALL_PACKAGES_HASH, no
   packages: agents delete packages the server no longer offers) goes only to an agent that holds
   packages from the server; one that never had any is sent nothing.
"""

from __future__ import annotations

from gateway.fleet.agent import AgentState
from gateway.fleet.package_set import EMPTY_ALL_PACKAGES_HASH, NO_PACKAGES, PackageSet
from gateway.fleet.package_status import progress_only
from gateway.proto import opamp_pb2 as pb

ACCEPTS_PACKAGES = pb.AgentCapabilities_AcceptsPackages
REPORTS_PACKAGE_STATUSES = pb.AgentCapabilities_ReportsPackageStatuses


def packages_to_offer(
    state: AgentState, packages: PackageSet, now: float, resend_after: float
) -> pb.PackagesAvailable | None:
    """The PackagesAvailable to send the agent now, or None (the rules above); `resend_after` is
    --config-resend-after."""
    if not state.capabilities & ACCEPTS_PACKAGES:
        return None
    if not packages and state.offered_packages_hash is None and state.package_statuses is None:
        # No package known, none ever offered or reported: nothing to do (every heartbeat asks).
        return None
    reports = bool(state.capabilities & REPORTS_PACKAGE_STATUSES)
    reported = None if state.package_statuses is None else packages.reported_hash(state.package_statuses)
    desired = packages.desired_for(state)
    if desired is None:
        held = reported if reported is not None else state.offered_packages_hash
        if not held or held == EMPTY_ALL_PACKAGES_HASH:
            return None
        desired = NO_PACKAGES
    if desired.hash == state.offered_packages_hash and (
        not reports or now - state.offered_packages_at < resend_after
    ):
        return None
    if reported == desired.hash:
        return None
    return desired.message


def offer_packages(
    state: AgentState,
    packages: PackageSet,
    now: float,
    resend_after: float,
    reply: pb.ServerToAgent,
    changed: set[str],
) -> AgentState:
    """Put the agent's packages into `reply` if it should get them now; the record remembers the
    offer. Adds the changed fields' names to `changed`."""
    message = packages_to_offer(state, packages, now, resend_after)
    if message is None:
        return state
    reply.packages_available.CopyFrom(message)
    changed.add("offered_packages_hash")
    return state.updated(offered_packages_hash=message.all_packages_hash, offered_packages_at=now)


def on_package_report(before: AgentState, after: AgentState, changed: set[str]) -> AgentState:
    """A new PackageStatuses (kept as `after.package_statuses`): one that names another all-packages
    hash than the report before it ends the wait for the last offer (rule 3)."""
    if after.offered_packages_hash is None:
        return after
    old = _all_hash(before.package_statuses)
    new = _all_hash(after.package_statuses)
    if new == old or new == after.offered_packages_hash:
        return after
    changed.add("offered_packages_hash")
    return after.updated(offered_packages_hash=None, offered_packages_at=0.0)


def _all_hash(statuses: bytes | None) -> bytes | None:
    if statuses is None:
        return None
    value: bytes = pb.PackageStatuses.FromString(statuses).server_provided_all_packages_hash
    return value


def on_new_connection(state: AgentState) -> AgentState:
    """An offer made before a new connection may never have arrived: not waited for, except by an
    agent that never reports (its last offer is all the server knows of what it holds)."""
    if state.offered_packages_hash is None or not state.capabilities & REPORTS_PACKAGE_STATUSES:
        return state
    return state.updated(offered_packages_hash=None, offered_packages_at=0.0)


def report_durable(before: bytes | None, after: bytes | None) -> bool:
    """Whether a changed PackageStatuses is worth a commit before the reply: not when only download
    progress moved (the next report brings it again; the statuses themselves are committed)."""
    return not progress_only(before, after)
