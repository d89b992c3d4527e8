"""`opamp-gateway migrate`: create or upgrade the Elasticsearch templates, indices and aliases.

Idempotent: run it before every install or upgrade (the Helm chart's pre-install/pre-upgrade Job
does); a run with nothing to do changes nothing. For each of the agents and configs aliases:

1. The composable index template is created, or replaced when this gateway's mapping version is
   newer than the template's.
2. Without the alias, the first index (`<alias>-000001`) is created with the alias as its write
   alias. The gateway itself never creates indices: `serve` stays unready until this has run.
3. If the index behind the alias has an older mapping version, it is rolled over to the next index:
   the old index gets a write block with the add-block API (`PUT /<index>/_block/write`, which waits
   for in-flight writes to finish, unlike setting `index.blocks.write`; gateways still running retry
   their writes instead of losing them), its documents are copied with `_reindex`, and the alias
   moves to the new index in one atomic `_aliases` call. The old index is kept, read-only, for a rollback;
   delete it when satisfied. Mapping changes are additive, so older gateways keep working on the new
   index during a rolling upgrade.

A mapping version newer than this gateway's is refused: run the newer gateway's migrate.

On Elastic Cloud Serverless (`--serverless`, or detected from the cluster's `build_flavor`), the
templates leave out the shard and replica settings Serverless manages itself and refuses.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from elasticsearch import AsyncElasticsearch

from gateway.settings import Settings
from gateway.store.elasticsearch_client import (
    CLIENT_ERRORS,
    ElasticsearchConfigError,
    make_client,
    store_error,
)
from gateway.store.elasticsearch_schema import (
    SERVERLESS_FLAVOR,
    IndexSpec,
    agents_index,
    configs_index,
    mapping_version,
)

logger = logging.getLogger("gateway.migrate")

# Copying a large agents index takes a while; the normal request timeout is for the hot path.
COPY_TIMEOUT = 3600.0


class MigrateError(Exception):
    """The cluster is in a state migrate must not change on its own; the message says what to do."""


def index_specs(settings: Settings) -> list[IndexSpec]:
    return [
        agents_index(settings.elasticsearch_agents_alias, settings.elasticsearch_refresh_interval),
        configs_index(settings.elasticsearch_configs_alias),
    ]


async def run(settings: Settings, *, serverless: bool | None = None) -> list[str]:
    """Migrate the cluster named by the settings; returns what was done, one line per change.
    `serverless` None: ask the cluster."""
    if not settings.elasticsearch_url:
        raise MigrateError(
            "migrate needs --elasticsearch-url (OPAMP_GATEWAY_ELASTICSEARCH_URL); the SQLite store "
            "creates its own schema"
        )
    try:
        client = make_client(settings)
    except ElasticsearchConfigError as exc:
        raise MigrateError(str(exc)) from None
    try:
        return await migrate(client, index_specs(settings), serverless=serverless)
    finally:
        await client.close()


async def migrate(
    client: AsyncElasticsearch, specs: Sequence[IndexSpec], *, serverless: bool | None = None
) -> list[str]:
    done: list[str] = []
    try:
        if serverless is None:
            serverless = await is_serverless(client)
        for spec in specs:
            done += await _template(client, spec, serverless)
            done += await _index(client, spec)
    except CLIENT_ERRORS as exc:
        raise MigrateError(str(store_error(exc, "migrate"))) from exc
    return done


async def is_serverless(client: AsyncElasticsearch) -> bool:
    """Whether the cluster is Elastic Cloud Serverless: its `GET /` says `build_flavor: serverless`."""
    response = await client.options(ignore_status=(401, 403)).info()
    if response.meta.status != 200:
        # `GET /` needs the `monitor` cluster privilege, which older migrate keys lack.
        logger.warning(
            "cannot read the cluster's build flavor (HTTP %d: give the migrate key the `monitor` "
            "cluster privilege); assuming it is not Serverless (pass --serverless if it is)",
            response.meta.status,
        )
        return False
    version = response.body.get("version", {})
    return isinstance(version, dict) and version.get("build_flavor") == SERVERLESS_FLAVOR


async def _template(client: AsyncElasticsearch, spec: IndexSpec, serverless: bool) -> list[str]:
    response = await client.options(ignore_status=404).indices.get_index_template(name=spec.template_name)
    found = response.body.get("index_templates", []) if response.meta.status == 200 else []
    template = found[0]["index_template"] if found else {}
    current = template.get("version")
    if isinstance(current, int) and current > spec.version:
        raise MigrateError(
            f"index template {spec.template_name} is at mapping version {current}, newer than this "
            f"gateway's {spec.version}: run the migrate of the newer gateway"
        )
    wanted = spec.template(serverless)
    settings = template.get("template", {}).get("settings", {}).get("index", {})
    if current == spec.version and _same_settings(settings, wanted["template"]["settings"]["index"]):
        return []
    await client.indices.put_index_template(name=spec.template_name, **wanted)
    if current == spec.version:
        # Same mappings, other settings (a new --elasticsearch-refresh-interval, or Serverless): the
        # next index made from it must not get the old ones.
        return [f"index template {spec.template_name}: settings of mapping version {current} updated"]
    return [f"index template {spec.template_name}: mapping version {current} -> {spec.version}"]


def _same_settings(found: dict[str, Any], wanted: dict[str, Any]) -> bool:
    """Elasticsearch gives settings back as strings, and may add its own keys."""
    return all(str(found.get(key)) == str(value) for key, value in wanted.items()) and not (
        set(found) - set(wanted)
    )


async def _alias_indices(client: AsyncElasticsearch, alias: str) -> dict[str, dict[str, Any]]:
    """index -> the alias' properties on it; empty if there is no such alias."""
    response = await client.options(ignore_status=404).indices.get_alias(name=alias)
    if response.meta.status == 404:
        return {}
    return {index: info["aliases"].get(alias, {}) for index, info in response.body.items()}


async def _index(client: AsyncElasticsearch, spec: IndexSpec) -> list[str]:
    indices = await _alias_indices(client, spec.alias)
    if not indices:
        if (await client.indices.exists(index=spec.alias)).meta.status == 200:
            raise MigrateError(
                f"{spec.alias} is an index, not an alias (was it created by a write before migrate?): "
                f"move its documents to {spec.index_name(1)} with _reindex and delete it, then run migrate"
            )
        return await _first_index(client, spec) + await _refresh_interval(client, spec, spec.index_name(1))
    writers = [i for i, props in indices.items() if props.get("is_write_index")] or list(indices)
    if len(writers) != 1:
        raise MigrateError(f"alias {spec.alias} points at several indices ({', '.join(sorted(indices))})")
    current = writers[0]
    mappings = (await client.indices.get_mapping(index=current)).body[current]["mappings"]
    version = mapping_version(mappings)
    if version is None:
        raise MigrateError(f"index {current} behind {spec.alias} was not created by opamp-gateway migrate")
    if version > spec.version:
        raise MigrateError(
            f"index {current} is at mapping version {version}, newer than this gateway's {spec.version}: "
            "run the migrate of the newer gateway"
        )
    if version < spec.version:
        return await _roll_over(client, spec, current, version)
    return await _refresh_interval(client, spec, current)


async def _first_index(client: AsyncElasticsearch, spec: IndexSpec) -> list[str]:
    first = spec.index_name(1)
    alias = {spec.alias: {"is_write_index": True}}
    if (await client.indices.exists(index=first)).meta.status == 200:
        # A run that stopped between creating the index and naming it.
        await client.indices.update_aliases(
            actions=[{"add": {"index": first, "alias": spec.alias, **alias[spec.alias]}}]
        )
        return [f"alias {spec.alias} -> existing index {first}"]
    await client.indices.create(index=first, aliases=alias)
    return [f"index {first} created with write alias {spec.alias}"]


async def _refresh_interval(client: AsyncElasticsearch, spec: IndexSpec, index: str) -> list[str]:
    settings = (await client.indices.get_settings(index=index)).body[index]["settings"]["index"]
    if settings.get("refresh_interval") == spec.refresh_interval:
        return []
    await client.indices.put_settings(
        index=index, settings={"index": {"refresh_interval": spec.refresh_interval}}
    )
    return [f"index {index}: refresh_interval {settings.get('refresh_interval')} -> {spec.refresh_interval}"]


async def _roll_over(client: AsyncElasticsearch, spec: IndexSpec, current: str, version: int) -> list[str]:
    target = spec.index_name((spec.index_number(current) or 0) + 1)
    if (await client.indices.exists(index=target)).meta.status == 200:
        # Left by a run that stopped before the alias moved: nothing reads it, so start it afresh.
        await client.indices.delete(index=target)
    # The add-block API, not `index.blocks.write` through _settings: only it waits until writes
    # already in flight have finished, so no acknowledged write can miss the copy.
    await client.indices.add_block(index=current, block="write")
    # The copy is a search: it sees only what a refresh made visible.
    await client.indices.refresh(index=current)
    await client.indices.create(index=target)
    copied = await client.options(request_timeout=COPY_TIMEOUT).reindex(
        source={"index": current}, dest={"index": target}, wait_for_completion=True, refresh=True
    )
    failures = copied.body.get("failures") or []
    if failures:
        raise MigrateError(
            f"copying {current} to {target} failed for {len(failures)} documents, first: {failures[0]}; "
            f"{current} stays read-only behind {spec.alias}: fix the cause and run migrate again"
        )
    await client.indices.update_aliases(
        actions=[
            {"remove": {"index": current, "alias": spec.alias}},
            {"add": {"index": target, "alias": spec.alias, "is_write_index": True}},
        ]
    )
    logger.info("%s kept read-only for a rollback; delete it when the upgrade is done", current)
    return [
        f"index {current} (mapping version {version}) rolled over to {target} (version {spec.version}): "
        f"{copied.body.get('total', 0)} documents copied, alias {spec.alias} moved; {current} kept read-only"
    ]
