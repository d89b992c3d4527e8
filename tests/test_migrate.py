"""`opamp-gateway migrate`: first run, idempotent re-runs, upgrades by roll-over, refusals."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from elasticsearch import AsyncElasticsearch

from gateway import cli
from gateway.migrate import MigrateError, migrate
from gateway.store.base import StoreUnavailable
from gateway.store.elasticsearch_client import make_client
from gateway.store.elasticsearch_schema import (
    AGENT_PROPERTIES,
    AGENTS_MAPPING_VERSION,
    CONFIGS_MAPPING_VERSION,
    IndexSpec,
    agents_index,
    configs_index,
)
from tests.store.store_helpers import agent, full, heartbeat, touch
from tests.support.es import EsAliases, EsTarget, new_aliases, run_sync

pytestmark = pytest.mark.anyio

OPAMP_GATEWAY = str(Path(sys.executable).with_name("opamp-gateway"))


@pytest.fixture(params=["default", "serverless"])
def aliases(request: pytest.FixtureRequest) -> Iterator[EsAliases]:
    """Every test on a regular cluster and on Elastic Cloud Serverless (as the double plays them)."""
    target = "es_target" if request.param == "default" else "es_serverless_target"
    made = new_aliases(request.getfixturevalue(target))
    yield made
    run_sync(made.drop)


@pytest.fixture
async def client(aliases: EsAliases) -> AsyncIterator[AsyncElasticsearch]:
    es = make_client(aliases.settings())
    yield es
    await es.close()


V = AGENTS_MAPPING_VERSION
LATER = V + 1


def specs(aliases: EsAliases, agents_version: int = V, refresh: str = "1s") -> list[IndexSpec]:
    agents = agents_index(aliases.agents, refresh)
    if agents_version != agents.version:
        # A later gateway: one more field, as mapping changes are additive.
        properties = {**AGENT_PROPERTIES, "added_later": {"type": "keyword"}}
        agents = replace(agents, version=agents_version, properties=properties)
    return [agents, configs_index(aliases.configs)]


async def _aliases_of(client: AsyncElasticsearch, alias: str) -> list[str]:
    response = await client.indices.get_alias(name=alias)
    return sorted(response.body)


async def test_first_run_creates_templates_indices_and_write_aliases(
    aliases: EsAliases, client: AsyncElasticsearch
) -> None:
    done = await migrate(client, specs(aliases))
    assert done == [
        f"index template {aliases.agents}: mapping version None -> {V}",
        f"index {aliases.agents}-000001 created with write alias {aliases.agents}",
        f"index template {aliases.configs}: mapping version None -> {CONFIGS_MAPPING_VERSION}",
        f"index {aliases.configs}-000001 created with write alias {aliases.configs}",
    ]
    for alias in (aliases.agents, aliases.configs):
        response = await client.indices.get_alias(name=alias)
        assert dict(response.body) == {f"{alias}-000001": {"aliases": {alias: {"is_write_index": True}}}}
        mapping = (await client.indices.get_mapping(index=alias)).body[f"{alias}-000001"]["mappings"]
        assert mapping["dynamic"] == "strict"
        assert mapping["_meta"]["opamp_gateway"]["mapping_version"] == (
            V if alias == aliases.agents else CONFIGS_MAPPING_VERSION
        )
    settings = (await client.indices.get_settings(index=aliases.agents)).body
    assert settings[f"{aliases.agents}-000001"]["settings"]["index"]["refresh_interval"] == "1s"
    store = aliases.store()
    try:
        await store.ping()
    finally:
        await store.close()


async def test_a_second_run_changes_nothing(aliases: EsAliases, client: AsyncElasticsearch) -> None:
    await migrate(client, specs(aliases))
    double = aliases.target.double
    before = dict(double.stats.requests) if double else {}
    assert await migrate(client, specs(aliases)) == []
    if double:
        sent = {k: v - before.get(k, 0) for k, v in double.stats.requests.items() if v != before.get(k, 0)}
        assert set(sent) <= {"info", "get_index_template", "get_alias", "get_mapping", "get_settings"}, sent


async def test_a_changed_refresh_interval_is_applied(aliases: EsAliases, client: AsyncElasticsearch) -> None:
    await migrate(client, specs(aliases))
    done = await migrate(client, specs(aliases, refresh="30s"))
    assert done == [
        f"index template {aliases.agents}: settings of mapping version {V} updated",
        f"index {aliases.agents}-000001: refresh_interval 1s -> 30s",
    ]
    settings = (await client.indices.get_settings(index=aliases.agents)).body
    assert settings[f"{aliases.agents}-000001"]["settings"]["index"]["refresh_interval"] == "30s"


async def test_a_new_first_index_gets_the_current_refresh_interval(
    aliases: EsAliases, client: AsyncElasticsearch
) -> None:
    """The template is current but the index was deleted: the next index must not get the old interval."""
    await migrate(client, specs(aliases))
    await client.indices.delete(index=f"{aliases.agents}-000001")
    await migrate(client, specs(aliases, refresh="30s"))
    settings = (await client.indices.get_settings(index=aliases.agents)).body
    assert settings[f"{aliases.agents}-000001"]["settings"]["index"]["refresh_interval"] == "30s"
    template = (await client.indices.get_index_template(name=aliases.agents)).body["index_templates"][0]
    assert template["index_template"]["template"]["settings"]["index"]["refresh_interval"] == "30s"


async def test_serverless_templates_leave_out_shards_and_replicas(
    aliases: EsAliases, client: AsyncElasticsearch
) -> None:
    done = await migrate(client, specs(aliases), serverless=True)
    assert len(done) == 4
    template = (await client.indices.get_index_template(name=aliases.agents)).body["index_templates"][0]
    assert template["index_template"]["template"]["settings"] == {"index": {"refresh_interval": "1s"}}
    # A later run on a regular cluster puts the settings back, and the reverse.
    assert await migrate(client, specs(aliases), serverless=True) == []


async def test_the_serverless_double_refuses_shard_settings_and_migrate_detects_it() -> None:
    from harness.es_double import EsDouble

    with EsDouble(serverless=True) as double:
        target = EsTarget(double.url, double)
        made = new_aliases(target)
        es = make_client(made.settings())
        try:
            with pytest.raises(MigrateError, match="not available when running in serverless mode"):
                await migrate(es, specs(made), serverless=False)
            # Detected from GET / (build_flavor: serverless).
            done = await migrate(es, specs(made))
            assert f"index {made.agents}-000001 created with write alias {made.agents}" in done
        finally:
            await es.close()
        store = made.store()
        try:
            state = agent(last_seen=1.0)
            await store.write([full(state)])
            assert await store.get(state.instance_uid) == state
        finally:
            await store.close()


async def test_the_write_block_waits_for_writes_in_flight(
    aliases: EsAliases, client: AsyncElasticsearch
) -> None:
    """An acknowledged write that was in flight when migrate blocked the index is in the copy."""
    double = aliases.double
    await migrate(client, specs(aliases))
    store = aliases.store()
    state = agent(last_seen=10.0)
    try:
        double.faults.bulk_delay = 0.5
        writing = asyncio.ensure_future(store.write([full(state)]))
        await asyncio.sleep(0.2)  # the bulk has passed its block check and not yet applied
        await migrate(client, specs(aliases, agents_version=LATER))
        await writing
        double.faults.bulk_delay = 0.0
        assert await _aliases_of(client, aliases.agents) == [f"{aliases.agents}-000002"]
        assert await store.get(state.instance_uid) == state
    finally:
        await store.close()


async def test_an_upgrade_rolls_the_alias_over_to_a_copy(
    aliases: EsAliases, client: AsyncElasticsearch
) -> None:
    await migrate(client, specs(aliases, refresh="-1"))
    store = aliases.store(refresh=None)  # nothing refreshed: the copy must still see every write
    fleet = [agent(last_seen=float(n)) for n in range(1, 26)]
    try:
        await store.write([full(a) for a in fleet])
        done = await migrate(client, specs(aliases, agents_version=LATER, refresh="-1"))
        old, new = f"{aliases.agents}-000001", f"{aliases.agents}-000002"
        assert done[0] == f"index template {aliases.agents}: mapping version {V} -> {LATER}"
        assert done[1].startswith(
            f"index {old} (mapping version {V}) rolled over to {new} (version {LATER}): 25 documents"
        )
        assert await _aliases_of(client, aliases.agents) == [new]
        mapping = (await client.indices.get_mapping(index=aliases.agents)).body[new]["mappings"]
        assert mapping["_meta"]["opamp_gateway"]["mapping_version"] == LATER
        assert "added_later" in mapping["properties"]
        # The old index stays, read-only, for a rollback.
        blocked = (await client.indices.get_settings(index=old)).body[old]["settings"]["index"]
        assert blocked["blocks"]["write"] == "true"
        # The same client (an older gateway during a rolling upgrade) reads and writes on.
        for state in fleet:
            assert await store.get(state.instance_uid) == state
        beat = heartbeat(fleet[0], 100.0)
        await store.write([touch(beat)])
        assert await store.get(beat.instance_uid) == beat
        assert await migrate(client, specs(aliases, agents_version=LATER, refresh="-1")) == []
    finally:
        await store.close()


async def test_writes_during_the_copy_wait_and_land_after_it(
    aliases: EsAliases, client: AsyncElasticsearch
) -> None:
    await migrate(client, specs(aliases))
    store = aliases.store()
    state = agent(last_seen=10.0)
    try:
        await store.write([full(state)])
        # What migrate does first: the old index refuses writes while it is copied.
        await client.indices.put_settings(
            index=f"{aliases.agents}-000001", settings={"index.blocks.write": True}
        )
        with pytest.raises(StoreUnavailable, match="cluster_block_exception"):
            await store.write([touch(heartbeat(state, 11.0))])
        await migrate(client, specs(aliases, agents_version=LATER))
        # The Writer keeps failed batches and tries again: by then the alias names the new index.
        await store.write([touch(heartbeat(state, 11.0))])
        assert await store.get(state.instance_uid) == heartbeat(state, 11.0)
    finally:
        await store.close()


async def test_an_interrupted_upgrade_finishes_on_the_next_run(
    aliases: EsAliases, client: AsyncElasticsearch
) -> None:
    await migrate(client, specs(aliases))
    store = aliases.store()
    state = agent(last_seen=10.0)
    try:
        await store.write([full(state)])
    finally:
        await store.close()
    # A run that stopped after making the new index and blocking the old one.
    await client.indices.put_settings(index=f"{aliases.agents}-000001", settings={"index.blocks.write": True})
    await client.indices.create(index=f"{aliases.agents}-000002")
    await migrate(client, specs(aliases, agents_version=LATER))
    assert await _aliases_of(client, aliases.agents) == [f"{aliases.agents}-000002"]
    store = aliases.store()
    try:
        assert await store.get(state.instance_uid) == state
    finally:
        await store.close()


async def test_a_newer_mapping_is_refused(aliases: EsAliases, client: AsyncElasticsearch) -> None:
    await migrate(client, specs(aliases, agents_version=LATER))
    with pytest.raises(
        MigrateError, match=f"newer than this gateway's {V}: run the migrate of the newer gateway"
    ):
        await migrate(client, specs(aliases))


async def test_an_index_named_like_the_alias_is_refused(
    aliases: EsAliases, client: AsyncElasticsearch
) -> None:
    await client.indices.create(index=aliases.agents)
    try:
        with pytest.raises(MigrateError, match="is an index, not an alias"):
            await migrate(client, specs(aliases))
    finally:
        await client.indices.delete(index=aliases.agents)


def _env(aliases: EsAliases) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPAMP_GATEWAY_")}
    env.pop("PYTHONWARNINGS", None)
    env.update(
        OPAMP_GATEWAY_ELASTICSEARCH_URL=aliases.url,
        OPAMP_GATEWAY_ELASTICSEARCH_AGENTS_ALIAS=aliases.agents,
        OPAMP_GATEWAY_ELASTICSEARCH_CONFIGS_ALIAS=aliases.configs,
    )
    return env


def test_the_migrate_command(aliases: EsAliases) -> None:
    """What the Helm chart's hook Job runs: settings from OPAMP_GATEWAY_* variables."""
    first = subprocess.run(
        [OPAMP_GATEWAY, "migrate"], env=_env(aliases), capture_output=True, text=True, timeout=60, check=False
    )
    assert first.returncode == 0, first.stderr
    assert f"index {aliases.agents}-000001 created with write alias {aliases.agents}" in first.stdout
    again = subprocess.run(
        [OPAMP_GATEWAY, "migrate"], env=_env(aliases), capture_output=True, text=True, timeout=60, check=False
    )
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == "nothing to do: the templates, indices and aliases are up to date"


def test_the_migrate_command_for_serverless(aliases: EsAliases) -> None:
    done = subprocess.run(
        [OPAMP_GATEWAY, "migrate", "--serverless"],
        env=_env(aliases),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    es = run_sync(lambda: _template_settings(aliases))
    assert es == {"index": {"refresh_interval": "5s"}}


async def _template_settings(aliases: EsAliases) -> object:
    client = make_client(aliases.settings())
    try:
        found = (await client.indices.get_index_template(name=aliases.agents)).body["index_templates"]
        return found[0]["index_template"]["template"]["settings"]
    finally:
        await client.close()


def test_migrate_needs_an_elasticsearch_url(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["migrate"]) == 1
    assert "migrate needs --elasticsearch-url" in capsys.readouterr().err


def test_migrate_reports_an_unreachable_cluster(capsys: pytest.CaptureFixture[str]) -> None:
    from harness.ports import free_port

    assert cli.main(["migrate", f"--elasticsearch-url=http://127.0.0.1:{free_port()}"]) == 1
    assert "opamp-gateway: error: Elasticsearch migrate: ConnectionError" in capsys.readouterr().err


def test_an_unusable_ca_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    missing = tmp_path / "ca.crt"
    argv = ["--elasticsearch-url=https://es.example:9200", f"--elasticsearch-ca-cert={missing}"]
    assert cli.main(["migrate", *argv]) == 1
    assert f"--elasticsearch-ca-cert: {missing} is not a file" in capsys.readouterr().err
    assert cli.main(["serve", *argv]) == 1
    assert f"--elasticsearch-ca-cert: {missing} is not a file" in capsys.readouterr().err
    plain = ["--elasticsearch-url=http://es.example:9200", f"--elasticsearch-ca-cert={missing}"]
    assert cli.main(["migrate", *plain]) == 1
    assert "needs an https:// --elasticsearch-url" in capsys.readouterr().err


async def test_a_key_without_monitor_migrates_as_a_regular_cluster(
    aliases: EsAliases, client: AsyncElasticsearch, caplog: pytest.LogCaptureFixture
) -> None:
    double = aliases.double
    if double.cluster.serverless:
        pytest.skip("a Serverless project refuses the regular templates; --serverless is the answer there")
    double.faults.reject_status, double.faults.reject_endpoints = 403, frozenset({"info"})
    double.faults.reject_requests = 1
    try:
        done = await migrate(client, specs(aliases))
    finally:
        double.faults.reject_status, double.faults.reject_endpoints = 429, frozenset()
    assert f"index {aliases.agents}-000001 created with write alias {aliases.agents}" in done
    assert "give the migrate key the `monitor` cluster privilege" in caplog.text
