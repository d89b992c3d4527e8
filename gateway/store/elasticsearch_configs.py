"""Configs (and packages) in Elasticsearch: one document per config name, behind the `opamp-configs`
alias. Packages live in the same index, as documents `package~<name>` with `kind: "package"`
(elasticsearch_packages.py); `Documents` says which kind an instance of the class below reads and
writes, so both share every rule here.

Versions are the admin API's optimistic concurrency (`expected_version`), enforced with the
document's own `_seq_no`: read, decide, write with `if_seq_no`/`if_primary_term` (or `create`), and
on a 409 read again and decide again. Config writes are rare, so they use `refresh=true`: every node
reloading configs after a change sees it in its next search.

The config's last versions live in the same document (`history`, not indexed), so a version is
stored by the same conditional write as the config; reads that need only the config leave it out.
"""

from __future__ import annotations

import builtins
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from elastic_transport import ApiResponse
from elasticsearch import AsyncElasticsearch

from gateway.fleet.configs import Config
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
_Fields = list[str]


class _Stored(Protocol):
    @property
    def name(self) -> str: ...

    @property
    def version(self) -> int: ...

    @property
    def created_at(self) -> float: ...

    @property
    def hash(self) -> str: ...


class _Request(Protocol):
    @property
    def spec(self) -> Any: ...

    @property
    def expected_version(self) -> int | None: ...


Item = TypeVar("Item", bound=_Stored)
Version = TypeVar("Version")


@dataclass(frozen=True)
class Documents(Generic[Item, Version]):
    """One kind of versioned document in the configs index."""

    what: str
    # The document id is id_prefix + name; documents of this kind carry `kind: <kind>` (None: no
    # `kind` at all, the configs, which predate the field).
    id_prefix: str
    kind: str | None
    document: Callable[[Item], dict[str, Any]]
    from_source: Callable[[Mapping[str, Any]], Item]
    history_entry: Callable[[Version], dict[str, Any]]
    history_from_source: Callable[[Mapping[str, Any]], list[Version]]
    version_of: Callable[[Item], Version]
    # (name, spec, version, created_at, updated_at, hash) -> the resource.
    make: Callable[[str, Any, int, float, float, str], Item]
    # A kept version's number.
    number: Callable[[Version], int]

    def scope(self) -> dict[str, Any]:
        if self.kind is None:
            # Connection settings and packages share the index: not configs.
            return {"bool": {"must_not": [{"exists": {"field": "kind"}}]}}
        return {"term": {"kind": self.kind}}


CONFIGS: Documents[Config, ConfigVersion] = Documents(
    what="config",
    id_prefix="",
    kind=None,
    document=config_document,
    from_source=config_from_source,
    history_entry=history_entry,
    history_from_source=history_from_source,
    version_of=version_of,
    make=Config,
    number=lambda v: v.version,
)


class ConfigsIndex(Generic[Item, Version]):
    def __init__(
        self,
        client: AsyncElasticsearch,
        alias: str,
        request: Request,
        documents: Documents[Item, Version],
    ) -> None:
        self._client = client
        self._alias = alias
        self._request = request
        self._kind = documents

    async def list(self) -> builtins.list[Item]:
        return [self._config(hit) for hit in await self._scan(_CONFIG_SOURCE)]

    async def _scan(self, fields: _Fields) -> builtins.list[dict[str, Any]]:
        """Every config document's hit, by name, with only `fields` of its source."""
        found: builtins.list[dict[str, Any]] = []
        after: builtins.list[Any] | None = None
        while True:
            body: dict[str, Any] = {
                "query": self._kind.scope(),
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
        return StoredRollout(self._rollout(name, raw), f"{version[0]}:{version[1]}")

    async def list_rollouts(self) -> builtins.list[Rollout]:
        hits = await self._scan(["name", "rollout_record"])
        return [
            self._rollout(str(hit["_source"].get("name", hit["_id"])), hit["_source"]["rollout_record"])
            for hit in hits
            if "rollout_record" in hit["_source"]
        ]

    def _rollout(self, name: str, raw: Any) -> Rollout:
        try:
            return rollout_from_json(raw)
        except UnreadableRollout as exc:
            raise StoreError(f"rollout record of {self._kind.what} {name!r}: {exc}") from exc

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
                id=self._kind.id_prefix + rollout.name,
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

    async def get(self, name: str) -> Item | None:
        config, _, _, _ = await self._read(name, _CONFIG_SOURCE)
        return config

    async def versions(self, name: str) -> builtins.list[Version]:
        _, _, history, _ = await self._read(name)
        return sorted(history, key=lambda v: -self._kind.number(v))

    async def put(self, name: str, request: _Request, now: float) -> tuple[Item, bool]:
        kind = self._kind
        for _ in range(_ATTEMPTS):
            current, version, history, source = await self._read(name)
            stored = current.version if current is not None else 0
            if request.expected_version is not None and request.expected_version != stored:
                raise VersionConflict(name, request.expected_version, stored, kind.what)
            digest = request.spec.digest()
            if current is not None and current.hash == digest:
                return current, False
            created = current.created_at if current is not None else now
            config = kind.make(name, request.spec, stored + 1, created, now, digest)
            kept = [v for v in history if kind.number(v) >= oldest_kept(config.version)]
            document = {
                **kind.document(config),
                "history": [kind.history_entry(v) for v in [kind.version_of(config), *kept]],
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
                    id=kind.id_prefix + name,
                    document=document,
                    require_alias=True,
                    refresh=True,
                    **conditions,
                ),
            )
            if response.meta.status != 409:
                return config, True
        raise StoreUnavailable(f"{kind.what} {name!r} kept changing while it was written; try again")

    async def delete(self, name: str, expected_version: int | None) -> bool:
        for _ in range(_ATTEMPTS):
            current, version, _, _ = await self._read(name, _CONFIG_SOURCE)
            stored = current.version if current is not None else 0
            if expected_version is not None and expected_version != stored:
                raise VersionConflict(name, expected_version, stored, self._kind.what)
            if version is None:
                return False
            response = await self._request(
                "delete",
                self._client.options(ignore_status=(404, 409)).delete(
                    index=self._alias,
                    id=self._kind.id_prefix + name,
                    if_seq_no=version[0],
                    if_primary_term=version[1],
                    refresh=True,
                ),
            )
            if response.meta.status == 404:
                return False
            if response.meta.status != 409:
                return True
        raise StoreUnavailable(f"{self._kind.what} {name!r} kept changing while it was deleted; try again")

    async def _read(
        self, name: str, fields: _Fields | None = None
    ) -> tuple[Item | None, tuple[int, int] | None, builtins.list[Version], dict[str, Any]]:
        """The stored config, its (seq_no, primary_term), its history and the document's source,
        realtime; only `fields` of the document when given (the config is None unless they include
        the config's)."""
        response = await self._request(
            "get",
            self._client.options(ignore_status=404).get(
                index=self._alias, id=self._kind.id_prefix + name, realtime=True, source_includes=fields
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
            history = self._kind.history_from_source(source)
        except UnreadableDocument as exc:
            raise StoreError(f"{self._kind.what} document {name!r} in {body.get('_index')}: {exc}") from exc
        if not history and config is not None and fields is None:
            # Written by a gateway before versions: its history starts at its current version.
            history = [self._kind.version_of(config)]
        return config, (int(body["_seq_no"]), int(body["_primary_term"])), history, source

    def _config(self, hit: dict[str, Any]) -> Item:
        try:
            return self._kind.from_source(hit["_source"])
        except UnreadableDocument as exc:
            raise StoreError(
                f"{self._kind.what} document {hit.get('_id')!r} in {hit.get('_index')}: {exc}"
            ) from exc
