"""Configs in Elasticsearch: one document per config name, behind the `opamp-configs` alias.

Versions are the admin API's optimistic concurrency (`expected_version`), enforced with the
document's own `_seq_no`: read, decide, write with `if_seq_no`/`if_primary_term` (or `create`), and
on a 409 read again and decide again. Config writes are rare, so they use `refresh=true`: every node
reloading configs after a change sees it in its next search.

The config's last versions live in the same document (`history`, not indexed), so a version is
stored by the same conditional write as the config; reads that need only the config leave it out.
"""

from __future__ import annotations

import builtins
from collections.abc import Awaitable, Callable
from typing import Any

from elastic_transport import ApiResponse
from elasticsearch import AsyncElasticsearch

from gateway.fleet.configs import Config, ConfigRequest
from gateway.fleet.rollout_record import Rollout, UnreadableRollout, rollout_from_json
from gateway.fleet.versions import ConfigVersion, oldest_kept, version_of
from gateway.store.base import StoredRollout, StoreError, StoreUnavailable, VersionConflict
from gateway.store.elasticsearch_documents import (
    UnreadableDocument,
    config_document,
    config_from_source,
    history_entry,
    history_from_source,
)

Request = Callable[[str, Awaitable[ApiResponse[Any]]], Awaitable[Any]]

_ATTEMPTS = 5
_PAGE = 1000
# What config_from_source reads.
_CONFIG_SOURCE = ["name", "version", "hash", "spec", "opamp"]
# The class below has a method named `list`.
_Versions = list[ConfigVersion]
_Fields = list[str]


class ConfigsIndex:
    def __init__(self, client: AsyncElasticsearch, alias: str, request: Request) -> None:
        self._client = client
        self._alias = alias
        self._request = request

    async def list(self) -> list[Config]:
        return [self._config(hit) for hit in await self._scan(_CONFIG_SOURCE)]

    async def _scan(self, fields: _Fields) -> builtins.list[dict[str, Any]]:
        """Every config document's hit, by name, with only `fields` of its source."""
        found: builtins.list[dict[str, Any]] = []
        after: builtins.list[Any] | None = None
        while True:
            body: dict[str, Any] = {
                # Connection settings share the index (elasticsearch_settings.py): not configs.
                "query": {"bool": {"must_not": [{"exists": {"field": "kind"}}]}},
                "sort": [{"name": "asc"}],
                "size": _PAGE,
                "_source": fields,
            }
            if after is not None:
                body["search_after"] = after
            response = await self._request("search", self._client.search(index=self._alias, body=body))
            hits = response.body["hits"]["hits"]
            found.extend(hits)
            if len(hits) < _PAGE:
                return found
            after = hits[-1]["sort"]

    # -- rollout records (Store.put_rollout): the config document's `rollout_record` -------------

    async def get_rollout(self, name: str) -> StoredRollout | None:
        _, version, _, source = await self._read(name, ["rollout_record"])
        raw = source.get("rollout_record")
        if version is None or raw is None:
            return None
        return StoredRollout(_rollout(name, raw), f"{version[0]}:{version[1]}")

    async def list_rollouts(self) -> builtins.list[Rollout]:
        hits = await self._scan(["name", "rollout_record"])
        return [
            _rollout(hit["_id"], hit["_source"]["rollout_record"])
            for hit in hits
            if "rollout_record" in hit["_source"]
        ]

    async def put_rollout(self, rollout: Rollout, expected_rev: str | None) -> str | None:
        """The revision is the config document's: a config write in between fails the compare too."""
        _, version, _, source = await self._read(rollout.name)
        if version is None:
            return None
        current = f"{version[0]}:{version[1]}" if "rollout_record" in source else None
        if current != expected_rev:
            return None
        response = await self._request(
            "index",
            self._client.options(ignore_status=409).index(
                index=self._alias,
                id=rollout.name,
                document={**source, "rollout_record": rollout.to_json()},
                require_alias=True,
                refresh=True,
                if_seq_no=version[0],
                if_primary_term=version[1],
            ),
        )
        if response.meta.status == 409:
            return None
        return f"{response.body['_seq_no']}:{response.body['_primary_term']}"

    async def get(self, name: str) -> Config | None:
        config, _, _, _ = await self._read(name, _CONFIG_SOURCE)
        return config

    async def versions(self, name: str) -> _Versions:
        _, _, history, _ = await self._read(name)
        return sorted(history, key=lambda v: -v.version)

    async def put(self, name: str, request: ConfigRequest, now: float) -> tuple[Config, bool]:
        for _ in range(_ATTEMPTS):
            current, version, history, source = await self._read(name)
            stored = current.version if current is not None else 0
            if request.expected_version is not None and request.expected_version != stored:
                raise VersionConflict(name, request.expected_version, stored)
            digest = request.spec.digest()
            if current is not None and current.hash == digest:
                return current, False
            config = Config(
                name=name,
                spec=request.spec,
                version=stored + 1,
                created_at=current.created_at if current is not None else now,
                updated_at=now,
                hash=digest,
            )
            kept = [v for v in history if v.version >= oldest_kept(config.version)]
            document = {
                **config_document(config),
                "history": [history_entry(v) for v in [version_of(config), *kept]],
            }
            if "rollout_record" in source:
                document["rollout_record"] = source["rollout_record"]
            conditions: dict[str, Any] = (
                {"op_type": "create"}
                if version is None
                else {"if_seq_no": version[0], "if_primary_term": version[1]}
            )
            response = await self._request(
                "index",
                self._client.options(ignore_status=409).index(
                    index=self._alias,
                    id=name,
                    document=document,
                    require_alias=True,
                    refresh=True,
                    **conditions,
                ),
            )
            if response.meta.status != 409:
                return config, True
        raise StoreUnavailable(f"config {name!r} kept changing while it was written; try again")

    async def delete(self, name: str, expected_version: int | None) -> bool:
        for _ in range(_ATTEMPTS):
            current, version, _, _ = await self._read(name, _CONFIG_SOURCE)
            stored = current.version if current is not None else 0
            if expected_version is not None and expected_version != stored:
                raise VersionConflict(name, expected_version, stored)
            if version is None:
                return False
            response = await self._request(
                "delete",
                self._client.options(ignore_status=(404, 409)).delete(
                    index=self._alias,
                    id=name,
                    if_seq_no=version[0],
                    if_primary_term=version[1],
                    refresh=True,
                ),
            )
            if response.meta.status == 404:
                return False
            if response.meta.status != 409:
                return True
        raise StoreUnavailable(f"config {name!r} kept changing while it was deleted; try again")

    async def _read(
        self, name: str, fields: _Fields | None = None
    ) -> tuple[Config | None, tuple[int, int] | None, _Versions, dict[str, Any]]:
        """The stored config, its (seq_no, primary_term), its history and the document's source,
        realtime; only `fields` of the document when given (the config is None unless they include
        the config's)."""
        response = await self._request(
            "get",
            self._client.options(ignore_status=404).get(
                index=self._alias, id=name, realtime=True, source_includes=fields
            ),
        )
        body = response.body
        if response.meta.status == 404:
            if "error" in body:  # the index itself is missing, not the document
                raise StoreError(f"Elasticsearch get: {body['error']}: run `opamp-gateway migrate`")
            return None, None, [], {}
        source: dict[str, Any] = body["_source"]
        config = self._config(body) if "spec" in source else None
        try:
            history = history_from_source(source)
        except UnreadableDocument as exc:
            raise StoreError(f"config document {name!r} in {body.get('_index')}: {exc}") from exc
        if not history and config is not None and fields is None:
            # Written by a gateway before versions: its history starts at its current version.
            history = [version_of(config)]
        return config, (int(body["_seq_no"]), int(body["_primary_term"])), history, source

    def _config(self, hit: dict[str, Any]) -> Config:
        try:
            return config_from_source(hit["_source"])
        except UnreadableDocument as exc:
            raise StoreError(f"config document {hit.get('_id')!r} in {hit.get('_index')}: {exc}") from exc


def _rollout(name: str, raw: Any) -> Rollout:
    try:
        return rollout_from_json(raw)
    except UnreadableRollout as exc:
        raise StoreError(f"rollout record of config {name!r}: {exc}") from exc
