"""The store contract for packages, their revisions and rollout records, and the agents' reported package
statuses (stored whole, filtered by their terms). Every adapter runs it (see test_contract)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from gateway.fleet.agent import AgentState
from gateway.fleet.package_status import package_terms, term
from gateway.fleet.packages import PackageRequest, PackageVersion, parse_request
from gateway.fleet.versions import KEEP_VERSIONS
from gateway.proto import opamp_pb2 as pb
from gateway.store.base import MAX_PAGE_SIZE, AgentQuery, Store, VersionConflict
from tests.store.store_helpers import StoreFactory, agent, full
from tests.store.test_contract import NOW, OFFLINE_AFTER, list_all
from tests.store.test_contract_configs import put, spec as config_spec
from tests.store.test_contract_rollouts import rollout
from tests.support.packages import body

pytestmark = pytest.mark.anyio


def request(version: str = "0.121.0", expected: int | None = None, **extra: object) -> PackageRequest:
    raw = body(version, **extra)
    if expected is not None:
        raw["revision"] = expected
    return parse_request("otelcol", raw)


async def test_put_get_list_delete(store: Store) -> None:
    assert await store.list_packages() == []
    assert await store.get_package("otelcol") is None
    stored, changed = await store.put_package("otelcol", request(), 10.0)
    assert changed and stored.version == 1 and stored.created_at == stored.updated_at == 10.0
    assert stored.hash == request().spec.digest() and stored.spec == request().spec
    assert await store.get_package("otelcol") == stored
    await store.put_package("geoip", parse_request("geoip", body("1.0", type="addon")), 11.0)
    assert [p.name for p in await store.list_packages()] == ["geoip", "otelcol"]
    assert await store.delete_package("otelcol")
    assert not await store.delete_package("otelcol")
    assert await store.get_package("otelcol") is None
    assert [p.name for p in await store.list_packages()] == ["geoip"]


async def test_every_part_of_a_spec_round_trips(store: Store) -> None:
    full_spec = request(
        file={
            "download_url": "https://artifacts.example.com/a.tar.gz",
            "content_hash": "ab" * 32,
            "signature": "c2lnbmF0dXJl",
            "headers": {"Authorization": "Bearer t", "X-Tenant": "eu"},
        },
        priority=-7,
        package_name="otelcol-contrib",
        rollout={"strategy": "staged", "waves": [{"count": 2}, 50], "min_wave_seconds": 5},
    )
    stored, _ = await store.put_package("otelcol", full_spec, 1.0)
    assert (await store.get_package("otelcol")) == stored and stored.spec == full_spec.spec
    assert [v.spec for v in await store.package_versions("otelcol")] == [full_spec.spec]


async def test_identical_put_changes_nothing_and_a_change_counts_up(store: Store) -> None:
    first, _ = await store.put_package("otelcol", request(), 10.0)
    again, changed = await store.put_package("otelcol", request(), 20.0)
    assert not changed and again == first
    second, changed = await store.put_package("otelcol", request("0.122.0"), 30.0)
    assert changed and second.version == 2 and second.created_at == 10.0 and second.updated_at == 30.0
    assert await store.get_package("otelcol") == second


async def test_expected_revision_guards_put_and_delete(store: Store) -> None:
    with pytest.raises(VersionConflict, match="package 'otelcol' is at revision 0, not 1"):
        await store.put_package("otelcol", request(expected=1), 1.0)
    await store.put_package("otelcol", request(expected=0), 1.0)
    with pytest.raises(VersionConflict, match="at revision 1, not 0"):
        await store.put_package("otelcol", request("0.122.0", expected=0), 2.0)
    with pytest.raises(VersionConflict):
        await store.delete_package("otelcol", 5)
    assert await store.delete_package("otelcol", 1)


async def test_revisions_newest_first_and_only_the_last_kept(store: Store) -> None:
    total = KEEP_VERSIONS + 2
    for n in range(1, total + 1):
        await store.put_package("otelcol", request(f"0.{n}.0"), float(n))
    kept = await store.package_versions("otelcol")
    assert [v.version for v in kept] == list(range(total, 2, -1))
    assert kept[0] == PackageVersion(
        total, request(f"0.{total}.0").spec.digest(), float(total), request(f"0.{total}.0").spec
    )
    assert await store.package_versions("missing") == []
    assert await store.delete_package("otelcol")
    assert await store.package_versions("otelcol") == []


async def test_packages_configs_and_settings_stay_apart(store: Store) -> None:
    await store.put_config("otelcol", put(config_spec()), 1.0)
    await store.put_package("otelcol", request(), 2.0)
    assert [c.name for c in await store.list_configs()] == ["otelcol"]
    assert [p.name for p in await store.list_packages()] == ["otelcol"]
    assert await store.list_connection_settings() == []
    assert await store.delete_package("otelcol")
    assert await store.get_config("otelcol") is not None


async def test_rollout_records_compare_and_set_and_go_with_the_package(store: Store) -> None:
    assert await store.put_package_rollout(rollout("otelcol"), None) is None  # no such package
    await store.put_package("otelcol", request(), 1.0)
    await store.put_package("otelcol", request("0.122.0"), 2.0)
    first = await store.put_package_rollout(rollout("otelcol"), None)
    assert first is not None
    assert await store.put_package_rollout(rollout("otelcol", "paused"), None) is None
    second = await store.put_package_rollout(rollout("otelcol", "paused"), first)
    assert second is not None and second != first
    stored = await store.get_package_rollout("otelcol")
    assert stored is not None and stored.rollout == rollout("otelcol", "paused") and stored.rev == second
    assert await store.list_package_rollouts() == [rollout("otelcol", "paused")]
    # A config's rollout records are its own.
    assert await store.list_rollouts() == [] and await store.get_rollout("otelcol") is None
    # A package write keeps the record; a delete takes it along.
    await store.put_package("otelcol", request("0.123.0"), 3.0)
    assert (await store.get_package_rollout("otelcol")) is not None
    assert await store.delete_package("otelcol")
    assert await store.get_package_rollout("otelcol") is None
    assert await store.list_package_rollouts() == []


async def test_seen_by_another_node(store_factory: StoreFactory) -> None:
    one, two = await store_factory(), await store_factory()
    await one.put_package("otelcol", request(), 10.0)
    await two.put_package("otelcol", request("0.122.0", expected=1), 11.0)
    assert [v.version for v in await one.package_versions("otelcol")] == [2, 1]


# -- the agents' package statuses ------------------------------------------------------------------

HAS = b"\x0a" * 32
NEW = b"\x0b" * 32


def statuses(**packages: tuple[int, bytes]) -> bytes:
    out = pb.PackageStatuses(server_provided_all_packages_hash=b"\x01" * 32)
    for name, (status, hash_) in packages.items():
        entry = out.packages[name]
        entry.name = name
        entry.status = status  # type: ignore[assignment]
        if status == pb.PackageStatusEnum_Installed:
            entry.agent_has_hash = hash_
        else:
            entry.server_offered_hash = hash_
    return out.SerializeToString(deterministic=True)


async def _filtered(
    store: Store, *, with_: tuple[str, ...] = (), without: tuple[str, ...] = ()
) -> set[bytes]:
    query = AgentQuery(with_package_states=with_, without_package_states=without, limit=MAX_PAGE_SIZE)
    return {a.instance_uid for a in await list_all(store, query)}


async def test_package_statuses_round_trip_and_filter_by_their_terms(store: Store) -> None:
    installed = agent(package_statuses=statuses(otelcol=(pb.PackageStatusEnum_Installed, HAS)))
    downloading = agent(
        package_statuses=statuses(
            otelcol=(pb.PackageStatusEnum_Downloading, NEW), geoip=(pb.PackageStatusEnum_InstallFailed, HAS)
        ),
        offered_packages_hash=b"\x02" * 32,
        offered_packages_at=NOW - 5,
    )
    silent = agent()
    await store.write([full(installed), full(downloading), full(silent)])
    assert await store.get(downloading.instance_uid) == downloading
    assert package_terms(downloading.package_statuses) == [
        term("geoip", "failed", HAS),
        term("otelcol", "installing", NEW),
    ]
    assert await _filtered(store, with_=(term("otelcol", "installed", HAS),)) == {installed.instance_uid}
    assert await _filtered(
        store, with_=(term("otelcol", "installing", NEW), term("otelcol", "installed", HAS))
    ) == {
        installed.instance_uid,
        downloading.instance_uid,
    }
    assert await _filtered(store, with_=(term("geoip", "failed", HAS),)) == {downloading.instance_uid}
    assert await _filtered(store, with_=(term("otelcol", "installed", NEW),)) == set()
    not_installed = await _filtered(store, without=(term("otelcol", "installed", HAS),))
    assert not_installed == {downloading.instance_uid, silent.instance_uid}


async def test_the_terms_follow_new_reports(store: Store) -> None:
    state = agent(
        last_seen=NOW - 10, package_statuses=statuses(otelcol=(pb.PackageStatusEnum_Downloading, NEW))
    )
    await store.write([full(state)])
    assert await _filtered(store, with_=(term("otelcol", "installing", NEW),)) == {state.instance_uid}
    later: AgentState = replace(
        state, last_seen=NOW - 5, package_statuses=statuses(otelcol=(pb.PackageStatusEnum_Installed, NEW))
    )
    await store.write([full(later)])
    assert await _filtered(store, with_=(term("otelcol", "installing", NEW),)) == set()
    assert await _filtered(store, with_=(term("otelcol", "installed", NEW),)) == {state.instance_uid}
    listed = await store.list_agents(AgentQuery(limit=10), NOW, OFFLINE_AFTER)
    assert listed.agents == [later]
