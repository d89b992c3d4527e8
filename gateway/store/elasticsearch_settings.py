"""Connection settings in Elasticsearch: documents in the configs index, told apart by `kind`.

A connection setting named N is the document `connection-settings~N` (a config name never holds a
'~', so the ids cannot clash) with `kind: "connection_settings"`; config reads leave those out
(elasticsearch_configs.py). Writes read, decide and write with `if_seq_no`/`if_primary_term` (or
`create`), and on a 409 read again, like configs; `refresh=true`, so every node's next read sees it.
"""

from __future__ import annotations

from typing import Any

from elasticsearch import AsyncElasticsearch

from gateway.fleet.connection_settings import (
    ConnectionSettings,
    InvalidConnectionSettings,
    SettingsSpec,
    spec_from_json,
    spec_json,
)
from gateway.fleet.render import timestamp
from gateway.store.base import StoreError, StoreUnavailable
from gateway.store.elasticsearch_configs import Request

KIND = "connection_settings"
_ID_PREFIX = "connection-settings~"
_ATTEMPTS = 5
# More than any fleet keeps: connection settings are a handful of documents.
_MAX = 10_000


def _document(settings: ConnectionSettings) -> dict[str, Any]:
    return {
        "kind": KIND,
        "name": settings.name,
        "version": settings.version,
        "hash": settings.hash,
        "priority": settings.spec.priority,
        "created_at": timestamp(settings.created_at),
        "updated_at": timestamp(settings.updated_at),
        "selector": settings.spec.selector.to_json(),
        "spec": spec_json(settings.spec),
        "opamp": {"created_at": float(settings.created_at), "updated_at": float(settings.updated_at)},
    }


def _from_hit(hit: dict[str, Any]) -> ConnectionSettings:
    source = hit["_source"]
    try:
        return ConnectionSettings(
            name=source["name"],
            spec=spec_from_json(source["spec"]),
            version=int(source["version"]),
            created_at=float(source["opamp"]["created_at"]),
            updated_at=float(source["opamp"]["updated_at"]),
            hash=source["hash"],
        )
    except (KeyError, TypeError, ValueError, InvalidConnectionSettings) as exc:
        raise StoreError(f"connection settings document {hit.get('_id')!r} is unreadable: {exc}") from exc


class SettingsDocuments:
    def __init__(self, client: AsyncElasticsearch, alias: str, request: Request) -> None:
        self._client = client
        self._alias = alias
        self._request = request

    async def list(self) -> list[ConnectionSettings]:
        body = {"query": {"term": {"kind": KIND}}, "sort": [{"name": "asc"}], "size": _MAX}
        response = await self._request("search", self._client.search(index=self._alias, body=body))
        return [_from_hit(hit) for hit in response.body["hits"]["hits"]]

    async def get(self, name: str) -> ConnectionSettings | None:
        current, _ = await self._read(name)
        return current

    async def _read(self, name: str) -> tuple[ConnectionSettings | None, dict[str, Any]]:
        response = await self._request(
            "get",
            self._client.options(ignore_status=404).get(
                index=self._alias, id=_ID_PREFIX + name, realtime=True
            ),
        )
        body = response.body
        if response.meta.status == 404:
            if "error" in body:  # the index itself is missing, not the document
                raise StoreError(f"Elasticsearch get: {body['error']}: run `opamp-gateway migrate`")
            return None, {"op_type": "create"}
        conditions = {"if_seq_no": int(body["_seq_no"]), "if_primary_term": int(body["_primary_term"])}
        return _from_hit(body), conditions

    async def put(self, name: str, spec: SettingsSpec, now: float) -> tuple[ConnectionSettings, bool]:
        for _ in range(_ATTEMPTS):
            current, conditions = await self._read(name)
            digest = spec.digest()
            if current is not None and current.hash == digest:
                return current, False
            stored = ConnectionSettings(
                name=name,
                spec=spec,
                version=1 if current is None else current.version + 1,
                created_at=now if current is None else current.created_at,
                updated_at=now,
                hash=digest,
            )
            response = await self._request(
                "index",
                self._client.options(ignore_status=409).index(
                    index=self._alias,
                    id=_ID_PREFIX + name,
                    document=_document(stored),
                    require_alias=True,
                    refresh=True,
                    **conditions,
                ),
            )
            if response.meta.status != 409:
                return stored, True
        raise StoreUnavailable(f"connection settings {name!r} kept changing while written; try again")

    async def delete(self, name: str) -> bool:
        response = await self._request(
            "delete",
            self._client.options(ignore_status=404).delete(
                index=self._alias, id=_ID_PREFIX + name, refresh=True
            ),
        )
        return bool(response.meta.status != 404)
