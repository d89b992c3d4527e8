"""The engine's package rules (gateway/opamp/package_offers.py): capability gating, the offer and its
hashes, no resend while the agent holds it, no loop on failures or for agents that never report, the
resend rules of remote config (a timeout, a new connection, another reported hash), the empty offer
when nothing applies any more, and a staged rollout's previous revision outside its waves."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest

from gateway.fleet.agent import AgentState
from gateway.fleet.desired import RolloutView
from gateway.fleet.package_set import (
    EMPTY_ALL_PACKAGES_HASH,
    PackageSet,
    all_packages_hash,
    package_hash,
)
from gateway.opamp import capabilities as caps, engine
from gateway.opamp.engine import FleetView, Outcome, handle
from gateway.opamp.push import config_due, config_push
from gateway.proto import opamp_pb2 as pb
from tests.opamp.test_engine import NOW, UID, description, full_report, heartbeat
from tests.support.packages import package

ACCEPTS = caps.REPORTS_STATUS | caps.ACCEPTS_PACKAGES
REPORTS = ACCEPTS | caps.REPORTS_PACKAGE_STATUSES
RESEND = 60.0
OTELCOL = package("otelcol", "0.121.0")
PACKAGES = PackageSet((OTELCOL,))
FLEET = FleetView(packages=PACKAGES, config_resend_after=RESEND)
DESIRED = PACKAGES.resolve(UID, {"service.name": "otelcol-contrib"})
assert DESIRED is not None
ALL = DESIRED.hash
HASH = package_hash(OTELCOL)


def run(
    state: AgentState | None, msg: pb.AgentToServer, fleet: FleetView = FLEET, now: float = NOW
) -> Outcome:
    return handle(state, msg, fleet, now, lambda: pytest.fail("no uid should be minted"))


def statuses(
    all_hash: bytes, status: int | None = None, has: bytes = b"", offered: bytes = b""
) -> pb.PackageStatuses:
    out = pb.PackageStatuses(server_provided_all_packages_hash=all_hash)
    if status is not None:
        entry = out.packages["otelcol"]
        entry.name = "otelcol"
        entry.status = status  # type: ignore[assignment]
        entry.agent_has_hash = has
        entry.server_offered_hash = offered
    return out


def reporting(seq: int, report: pb.PackageStatuses, capabilities: int = REPORTS) -> pb.AgentToServer:
    msg = heartbeat(seq, capabilities=capabilities)
    msg.package_statuses.CopyFrom(report)
    return msg


def offered(capabilities: int = REPORTS) -> AgentState:
    outcome = run(None, full_report(0, capabilities=capabilities))
    assert outcome.reply.HasField("packages_available")
    assert outcome.state is not None
    return outcome.state


def test_the_server_advertises_packages() -> None:
    reply = run(None, full_report(0, capabilities=caps.REPORTS_STATUS)).reply
    assert reply.capabilities & pb.ServerCapabilities_OffersPackages
    assert reply.capabilities & pb.ServerCapabilities_AcceptsPackagesStatus


def test_only_agents_that_accept_packages() -> None:
    outcome = run(None, full_report(0, capabilities=caps.REPORTS_STATUS | caps.REPORTS_PACKAGE_STATUSES))
    assert not outcome.reply.HasField("packages_available")
    assert outcome.state is not None and outcome.state.offered_packages_hash is None


def test_first_contact_gets_every_package_that_applies_with_its_hashes() -> None:
    outcome = run(None, full_report(0, capabilities=REPORTS))
    offer = outcome.reply.packages_available
    assert offer.all_packages_hash == ALL == all_packages_hash([("otelcol", HASH)])
    assert list(offer.packages) == ["otelcol"]
    available = offer.packages["otelcol"]
    assert (available.type, available.version, available.hash) == (pb.PackageType_TopLevel, "0.121.0", HASH)
    assert available.file.download_url == OTELCOL.spec.file.download_url
    assert available.file.content_hash == OTELCOL.spec.file.content_hash
    assert outcome.state is not None
    assert (outcome.state.offered_packages_hash, outcome.state.offered_packages_at) == (ALL, NOW)
    assert outcome.write is not None and "offered_packages_hash" in outcome.write.changed


def test_an_agent_no_package_matches_is_sent_nothing() -> None:
    msg = full_report(0, capabilities=REPORTS)
    msg.agent_description.identifying_attributes[0].value.string_value = "something-else"
    assert not run(None, msg).reply.HasField("packages_available")


def test_not_offered_again_while_the_agent_holds_it() -> None:
    state = offered()
    outcome = run(state, reporting(1, statuses(ALL, pb.PackageStatusEnum_Installed, has=HASH)))
    assert not outcome.reply.HasField("packages_available")
    assert outcome.state is not None
    for seq in range(2, 6):
        outcome = run(outcome.state, heartbeat(seq, capabilities=REPORTS), now=NOW + seq * RESEND)
        assert not outcome.reply.HasField("packages_available")
        assert outcome.state is not None


def test_failures_are_not_offered_again_in_a_loop() -> None:
    state = offered()
    failed = statuses(ALL, pb.PackageStatusEnum_InstallFailed, offered=HASH)
    failed.packages["otelcol"].error_message = "checksum mismatch"
    outcome = run(state, reporting(1, failed))
    assert not outcome.reply.HasField("packages_available")
    for seq in range(2, 6):
        assert outcome.state is not None
        outcome = run(outcome.state, reporting(seq, failed), now=NOW + seq * RESEND)
        assert not outcome.reply.HasField("packages_available")


def test_waits_for_a_report_then_resends_after_the_timeout() -> None:
    state = offered()
    quiet = run(state, heartbeat(1, capabilities=REPORTS), now=NOW + RESEND - 1)
    assert not quiet.reply.HasField("packages_available")
    assert quiet.state is not None
    late = run(quiet.state, heartbeat(2, capabilities=REPORTS), now=NOW + RESEND + 1)
    assert late.reply.packages_available.all_packages_hash == ALL


def test_another_reported_hash_gets_the_offer_again_once() -> None:
    state = offered()
    stale = statuses(b"\x07" * 32)
    first = run(state, reporting(1, stale))
    assert first.reply.packages_available.all_packages_hash == ALL
    assert first.state is not None
    # The same stale report again (download progress, say): the offer just made is waited for.
    progress = statuses(b"\x07" * 32, pb.PackageStatusEnum_Downloading, offered=b"\x08" * 32)
    progress.packages["otelcol"].download_details.download_percent = 40.0
    again = run(first.state, reporting(2, progress))
    assert not again.reply.HasField("packages_available")


def test_an_agent_that_never_reports_gets_each_change_once() -> None:
    state = offered(ACCEPTS)
    for seq in range(1, 5):
        outcome = run(state, heartbeat(seq, capabilities=ACCEPTS), now=NOW + seq * RESEND)
        assert not outcome.reply.HasField("packages_available")
        assert outcome.state is not None
        state = outcome.state
    # Not on a new connection either: its last offer is all the server knows of what it holds.
    assert engine.on_new_connection(state) == state
    newer = FleetView(packages=PackageSet((package("otelcol", "0.122.0", revision=2),)))
    changed = run(state, heartbeat(5, capabilities=ACCEPTS), fleet=newer)
    assert changed.reply.packages_available.packages["otelcol"].version == "0.122.0"


def test_a_new_connection_does_not_wait_for_an_earlier_offer() -> None:
    state = offered()
    reconnected = engine.on_new_connection(state)
    assert reconnected.offered_packages_hash is None
    outcome = run(reconnected, heartbeat(1, capabilities=REPORTS))
    assert outcome.reply.packages_available.all_packages_hash == ALL


def test_a_change_is_offered_to_an_agent_that_holds_the_old_packages() -> None:
    state = offered()
    held = run(state, reporting(1, statuses(ALL, pb.PackageStatusEnum_Installed, has=HASH)))
    assert held.state is not None
    newer = package("otelcol", "0.122.0", revision=2)
    outcome = run(
        held.state, heartbeat(2, capabilities=REPORTS), fleet=FleetView(packages=PackageSet((newer,)))
    )
    offer = outcome.reply.packages_available
    assert offer.packages["otelcol"].hash == package_hash(newer) != HASH
    assert offer.all_packages_hash not in (ALL, b"")


def test_when_nothing_applies_any_more_the_empty_offer_goes_to_agents_that_hold_packages() -> None:
    state = offered()
    held = run(state, reporting(1, statuses(ALL, pb.PackageStatusEnum_Installed, has=HASH)))
    assert held.state is not None
    gone = FleetView(packages=PackageSet())
    outcome = run(held.state, heartbeat(2, capabilities=REPORTS), fleet=gone)
    assert outcome.reply.packages_available == pb.PackagesAvailable(all_packages_hash=EMPTY_ALL_PACKAGES_HASH)
    assert outcome.state is not None
    emptied = run(outcome.state, reporting(3, statuses(EMPTY_ALL_PACKAGES_HASH)), fleet=gone)
    assert not emptied.reply.HasField("packages_available")
    # An agent that never had any package is sent nothing.
    assert not run(None, full_report(0, capabilities=REPORTS), fleet=gone).reply.HasField(
        "packages_available"
    )


def test_the_highest_priority_package_of_each_name_wins() -> None:
    stable = package("otelcol-stable", "0.120.0", package_name="otelcol")
    canary = package("otelcol-canary", "0.122.0", package_name="otelcol", priority=10)
    addon = package("geoip", "1.0", type="addon")
    packages = PackageSet((stable, addon, canary))
    desired = packages.resolve(UID, {"service.name": "otelcol-contrib"})
    assert desired is not None
    assert [(p.package_name, p.source, p.package_version) for p in desired.packages] == [
        ("geoip", "geoip", "1.0"),
        ("otelcol", "otelcol-canary", "0.122.0"),
    ]
    assert desired.message.packages["geoip"].type == pb.PackageType_Addon
    # The same packages known in another order (another node): the same hashes.
    again = PackageSet((canary, addon, stable)).resolve(UID, {"service.name": "otelcol-contrib"})
    assert again is not None and again.hash == desired.hash and again.message == desired.message
    assert packages.generation == PackageSet((canary, stable, addon)).generation


def test_the_package_hash_covers_what_the_agent_is_sent() -> None:
    base = package_hash(package())
    assert base == package_hash(package("renamed"))  # the name is the map key, not the package
    assert package_hash(package(version="0.122.0")) != base
    signed = package(
        file={
            "download_url": package().spec.file.download_url,
            "content_hash": package().spec.file.content_hash.hex(),
            "signature": "c2lnbmF0dXJl",
        }
    )
    assert package_hash(signed) != base
    # The documented encoding (docs/packages.md).
    spec = package().spec
    parts = [b"top_level", b"0.121.0", spec.file.download_url.encode(), spec.file.content_hash, b""]
    framed = b"".join(len(p).to_bytes(8, "big") + p for p in parts)
    assert base == hashlib.sha256(b"opamp-gateway/package/v1\n" + framed).digest()


def test_a_staged_rollout_offers_the_previous_revision_outside_its_waves() -> None:
    old = package("otelcol", "0.120.0", revision=1)
    new = package("otelcol", "0.121.0", revision=2)
    view = RolloutView(version=2, previous=old, state="progressing", cutoff=0.0)
    packages = PackageSet((new,), rollouts={"otelcol": view})
    desired = packages.resolve(UID, {"service.name": "otelcol-contrib"})
    assert desired is not None and desired.packages[0].package_version == "0.120.0"
    assert packages.rollout_offers(new) == (("otelcol", package_hash(new)), ("otelcol", package_hash(old)))
    everyone = PackageSet((new,), rollouts={"otelcol": replace(view, cutoff=1.0)})
    moved = everyone.resolve(UID, {"service.name": "otelcol-contrib"})
    assert moved is not None and moved.packages[0].package_version == "0.121.0"


def test_statuses_are_stored_and_durable_unless_only_progress_moved() -> None:
    state = offered()
    downloading = statuses(ALL, pb.PackageStatusEnum_Downloading, offered=HASH)
    downloading.packages["otelcol"].download_details.download_percent = 10.0
    first = run(state, reporting(1, downloading))
    assert first.durable and first.state is not None
    assert first.state.package_statuses == downloading.SerializeToString(deterministic=True)
    downloading.packages["otelcol"].download_details.download_percent = 60.0
    progress = run(first.state, reporting(2, downloading))
    assert (
        not progress.durable and progress.write is not None and "package_statuses" in progress.write.changed
    )
    assert progress.state is not None
    installed = run(progress.state, reporting(3, statuses(ALL, pb.PackageStatusEnum_Installed, has=HASH)))
    assert installed.durable


def test_a_status_report_is_not_a_plain_heartbeat() -> None:
    state = offered()
    assert engine._heartbeat(state, reporting(1, statuses(ALL)), FLEET, NOW) is None
    # A due offer is not either.
    assert (
        engine._heartbeat(engine.on_new_connection(state), heartbeat(1, capabilities=REPORTS), FLEET, NOW)
        is None
    )
    held = run(state, reporting(1, statuses(ALL)))
    assert held.state is not None
    assert engine._heartbeat(held.state, heartbeat(2, capabilities=REPORTS), FLEET, NOW) is not None


def test_pushed_to_a_held_agent_when_packages_change() -> None:
    state = offered()
    held = run(state, reporting(1, statuses(ALL, pb.PackageStatusEnum_Installed, has=HASH)))
    assert held.state is not None
    assert not config_due(held.state, FLEET, NOW)
    newer = FleetView(packages=PackageSet((package("otelcol", "0.122.0", revision=2),)))
    assert config_due(held.state, newer, NOW)
    push = config_push(held.state, newer, NOW)
    assert push is not None and push.reply.packages_available.packages["otelcol"].version == "0.122.0"
    assert push.state.offered_packages_hash == push.reply.packages_available.all_packages_hash


def test_package_and_description_in_one_report() -> None:
    msg = full_report(0, capabilities=REPORTS)
    msg.agent_description.CopyFrom(description())
    msg.package_statuses.CopyFrom(statuses(ALL, pb.PackageStatusEnum_Installed, has=HASH))
    # The agent says it holds the desired packages already: nothing to offer.
    assert not run(None, msg).reply.HasField("packages_available")
