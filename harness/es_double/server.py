"""The double's HTTP layer: Elasticsearch's REST paths, parameters, headers and errors, on a real
uvicorn server on a free loopback port, plus fault injection and request counting for tests.

Every response carries `X-Elastic-Product: Elasticsearch` (the official client refuses a server
without it) and answers the client's `compatible-with` media type. Unknown paths and unknown query
parameters are refused as Elasticsearch refuses them, so an adapter that sends something the double
does not implement fails loudly instead of passing by accident.
"""

from __future__ import annotations

import asyncio
import json
import re
import urllib.parse
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from harness.es_double import by_query, documents, errors
from harness.es_double.cluster import Cluster, nested_settings
from harness.es_double.faults import Faults, Stats

VERSION = "9.1.5"
# http.max_content_length: a longer request body is refused before it is read (413, empty body).
MAX_CONTENT_LENGTH = 100 << 20
_COMPAT = re.compile(r"compatible-with=(\d+)")
_COMMON_PARAMS = frozenset({"error_trace", "filter_path", "human", "pretty"})


@dataclass
class Call:
    method: str
    parts: list[str]
    params: dict[str, str]
    body: bytes
    # (items, bytes) once a bulk request has been applied
    bulk: tuple[int, int] | None = None

    def json(self) -> dict[str, Any]:
        if not self.body.strip():
            return {}
        try:
            parsed = json.loads(self.body, parse_constant=_non_numeric)
        except json.JSONDecodeError as exc:
            raise errors.EsError(
                400, "x_content_parse_exception", f"[1:1] Unexpected character: {exc}"
            ) from None
        if not isinstance(parsed, dict):
            raise errors.EsError(400, "x_content_parse_exception", "[1:1] request body must be an object")
        return parsed

    def flag(self, name: str, default: bool = False) -> bool:
        value = self.params.get(name)
        return default if value is None else value in ("", "true")

    def number(self, name: str) -> int | None:
        value = self.params.get(name)
        return None if value is None else int(value)

    def includes(self) -> list[str] | None:
        value = self.params.get("_source_includes")
        return value.split(",") if value else None


def _non_numeric(name: str) -> Any:
    """Elasticsearch's JSON parser refuses NaN and Infinity in any request body."""
    raise errors.EsError(
        400,
        "x_content_parse_exception",
        f"[1:1] Non-standard token '{name}': enable `JsonReadFeature.ALLOW_NON_NUMERIC_NUMBERS` to allow",
    )


class Handler:
    """Routes one request to the cluster; `faults` and `stats` are the test's handles."""

    def __init__(
        self, cluster: Cluster, max_content_length: int = MAX_CONTENT_LENGTH, major: int = 9
    ) -> None:
        self.cluster = cluster
        # The major version it answers as: a node accepts compatible-with its major and the one before.
        self.major = major
        self.max_content_length = max_content_length
        self.faults = Faults()
        self.stats = Stats()
        self._table = self._routes()
        # Bulk requests past their block check and not yet applied (what the add-block API waits for).
        self._in_flight = 0

    async def handle(self, request: Request) -> Response:
        try:
            compat = self._compat(request)
        except errors.EsError as exc:
            return self._respond(request.method, exc.status, exc.body(), None)
        body = await request.body()
        if len(body) > self.max_content_length:
            # Elasticsearch answers before reading the rest; the double reads it all first, so that
            # the client sees the 413 rather than a connection reset in the middle of its send.
            self.stats.record("too_large")
            return Response(status_code=413, headers={"X-Elastic-Product": "Elasticsearch"})
        parts = [urllib.parse.unquote(p) for p in request.url.path.strip("/").split("/") if p]
        call = Call(request.method, parts, dict(request.query_params), body)
        endpoint, allowed, run = self._route(call)
        try:
            return await self._serve(request, call, endpoint, allowed, run, compat)
        finally:
            self.stats.record(endpoint, call.bulk)

    async def _serve(
        self,
        request: Request,
        call: Call,
        endpoint: str,
        allowed: frozenset[str],
        run: Any,
        compat: int | None,
    ) -> Response:
        if self.faults.latency:
            await asyncio.sleep(self.faults.latency)
        try:
            unknown = set(call.params) - allowed - _COMMON_PARAMS
            if unknown:
                raise errors.illegal(
                    f"request [{request.url.path}] contains unrecognized parameter: [{sorted(unknown)[0]}]"
                )
            if self.faults.take_request(endpoint):
                raise (
                    errors.rejected()
                    if self.faults.reject_status == 429
                    else errors.EsError(
                        self.faults.reject_status,
                        "unavailable_shards_exception",
                        "[opamp] primary shard is not active",
                    )
                )
            result = run(call)
            status, payload, refresh = await result if asyncio.iscoroutine(result) else result
            mode = call.params.get("refresh", "false")
            if refresh and mode != "false":
                await self._refresh(mode, refresh)
        except errors.EsError as exc:
            status, payload = exc.status, exc.body()
        except _RawError as exc:
            status, payload = exc.status, exc.payload
        return self._respond(request.method, status, payload, compat)

    def _compat(self, request: Request) -> int | None:
        found = None
        for header in ("accept", "content-type"):
            match = _COMPAT.search(request.headers.get(header, ""))
            if match is not None:
                found = int(match.group(1))
        if found is not None and found not in (self.major - 1, self.major):
            raise errors.EsError(
                400,
                "media_type_header_exception",
                "Invalid media-type value on headers [Accept, Content-Type]",
                caused_by={
                    "type": "status_exception",
                    "reason": f"A compatible version is required on both "
                    f"Content-Type and Accept headers; compatible-with={found} is not supported",
                },
            )
        return found

    @staticmethod
    def _respond(method: str, status: int, payload: Any, compat: int | None) -> Response:
        media = (
            "application/json"
            if compat is None
            else f"application/vnd.elasticsearch+json;compatible-with={compat}"
        )
        headers = {"X-Elastic-Product": "Elasticsearch"}
        if method == "HEAD":
            return Response(status_code=status, headers=headers, media_type=media)
        return Response(json.dumps(payload), status_code=status, headers=headers, media_type=media)

    async def _refresh(self, mode: str, indices: set[str]) -> None:
        """`refresh=true` refreshes now; `wait_for` returns once a refresh made the write visible."""
        with self.cluster.lock:
            targets = [self.cluster.indices[i] for i in indices if i in self.cluster.indices]
            if mode in ("", "true"):
                for index in targets:
                    index.refresh()
                return
            marks = {index.name: index.generation for index in targets}
        while True:
            with self.cluster.lock:
                waiting = [i for i in targets if i.generation == marks[i.name]]
                for index in waiting:
                    if index.refresh_interval is None:
                        index.refresh()  # nothing would ever refresh it: Elasticsearch forces one
            if not waiting:
                return
            await asyncio.sleep(0.01)

    # -- routing -----------------------------------------------------------------------------------

    def _routes(self) -> list[tuple[frozenset[str], tuple[str, ...], str, frozenset[str], Any]]:
        """(methods, path pattern, endpoint, query parameters, handler). In patterns `{name}` is an
        index, alias or id (not starting with `_`)."""
        f = frozenset
        doc_write = f({"op_type", "if_seq_no", "if_primary_term", "refresh", "require_alias"})
        return [
            (f({"GET", "HEAD"}), (), "info", f(), self._info),
            (f({"POST", "PUT"}), ("_bulk",), "bulk", f({"refresh", "require_alias", "timeout"}), self._bulk),
            (
                f({"POST", "PUT"}),
                ("{i}", "_bulk"),
                "bulk",
                f({"refresh", "require_alias", "timeout"}),
                self._bulk,
            ),
            (f({"GET", "POST"}), ("_mget",), "mget", f({"realtime", "_source_includes"}), self._mget),
            (f({"GET", "POST"}), ("{i}", "_mget"), "mget", f({"realtime", "_source_includes"}), self._mget),
            (f({"GET", "POST"}), ("_search",), "search", f(), self._search),
            (f({"GET", "POST"}), ("{i}", "_search"), "search", f(), self._search),
            (f({"GET"}), ("{i}", "_doc", "{d}"), "get", f({"realtime", "_source_includes"}), self._get),
            (f({"PUT", "POST"}), ("{i}", "_doc", "{d}"), "index", doc_write, self._index),
            (
                f({"DELETE"}),
                ("{i}", "_doc", "{d}"),
                "delete",
                f({"if_seq_no", "if_primary_term", "refresh"}),
                self._delete,
            ),
            (f({"GET", "POST"}), ("_refresh",), "refresh", f(), self._refresh_api),
            (f({"GET", "POST"}), ("{i}", "_refresh"), "refresh", f(), self._refresh_api),
            (f({"GET"}), ("{i}", "_mapping"), "get_mapping", f(), self._get_mapping),
            (f({"GET"}), ("{i}", "_settings"), "get_settings", f(), self._get_settings),
            (f({"PUT"}), ("{i}", "_settings"), "put_settings", f(), self._put_settings),
            (
                f({"PUT"}),
                ("{i}", "_block", "{b}"),
                "add_block",
                f(
                    {
                        "timeout",
                        "master_timeout",
                        "allow_no_indices",
                        "expand_wildcards",
                        "ignore_unavailable",
                    }
                ),
                self._add_block,
            ),
            (f({"GET", "HEAD"}), ("_alias", "{a}"), "get_alias", f(), self._get_alias),
            (f({"POST"}), ("_aliases",), "update_aliases", f(), self._update_aliases),
            (f({"PUT"}), ("_index_template", "{t}"), "put_index_template", f(), self._put_template),
            (f({"GET"}), ("_index_template", "{t}"), "get_index_template", f(), self._get_template),
            (f({"DELETE"}), ("_index_template", "{t}"), "delete_index_template", f(), self._delete_template),
            (
                f({"POST"}),
                ("{i}", "_delete_by_query"),
                "delete_by_query",
                by_query.PARAMS,
                self._delete_by_query,
            ),
            (f({"POST"}), ("_reindex",), "reindex", f({"wait_for_completion", "refresh"}), self._reindex),
            (f({"HEAD"}), ("{i}",), "exists", f(), self._exists),
            (f({"PUT"}), ("{i}",), "create_index", f(), self._create_index),
            (f({"DELETE"}), ("{i}",), "delete_index", f(), self._delete_index),
        ]

    def _route(self, call: Call) -> tuple[str, frozenset[str], Any]:
        for methods, pattern, endpoint, params, handler in self._table:
            if call.method in methods and _matches(pattern, call.parts):
                return endpoint, params, handler
        return "unknown", frozenset(), self._no_handler

    # -- handlers: (status, body, indices to refresh per ?refresh) --------------------------------

    def _no_handler(self, call: Call) -> tuple[int, Any, set[str]]:
        path = "/" + "/".join(call.parts)
        raise _RawError(
            400, {"error": f"no handler found for uri [{path}] and method [{call.method}]", "status": 400}
        )

    def _info(self, call: Call) -> tuple[int, Any, set[str]]:
        return (
            200,
            {
                "name": "es-double",
                "cluster_name": "opamp-test",
                "cluster_uuid": "d0ubl3-cluster",
                "version": {
                    "number": VERSION if self.major == 9 else f"{self.major}.19.0",
                    "build_flavor": "serverless" if self.cluster.serverless else "default",
                    "build_type": "docker",
                    "lucene_version": "10.2.2",
                    "minimum_wire_compatibility_version": "8.19.0",
                    "minimum_index_compatibility_version": "8.0.0",
                },
                "tagline": "You Know, for Search",
            },
            set(),
        )

    async def _bulk(self, call: Call) -> tuple[int, Any, set[str]]:
        target = call.parts[0] if len(call.parts) == 2 else None
        # Like a primary shard: the block is checked when the operation starts, and an operation
        # that passed it completes even if a block is set meanwhile through _settings; only the
        # add-block API waits for it (faults.bulk_delay widens that window for tests).
        with self.cluster.lock:
            passed = documents.unblocked(self.cluster, target, call.body)
            self._in_flight += 1
        try:
            if self.faults.bulk_delay:
                await asyncio.sleep(self.faults.bulk_delay)
            with self.cluster.lock:
                response, touched = documents.bulk(
                    self.cluster,
                    target,
                    call.body,
                    call.flag("require_alias"),
                    self.faults.take_item,
                    passed_blocks=passed,
                )
        finally:
            with self.cluster.lock:
                self._in_flight -= 1
        call.bulk = (len(response["items"]), len(call.body))
        return 200, response, touched

    async def _add_block(self, call: Call) -> tuple[int, Any, set[str]]:
        block = call.parts[2]
        if block not in ("write", "read_only", "read", "metadata"):
            raise errors.illegal(f"No enum constant for block [{block}]")
        with self.cluster.lock:
            indices = self.cluster.resolve(call.parts[0])
            for index in indices:
                index.settings[f"index.blocks.{block}"] = "true"
        # The block is in place; now every operation that started before it must finish.
        while True:
            with self.cluster.lock:
                if self._in_flight == 0:
                    break
            await asyncio.sleep(0.005)
        return (
            200,
            {
                "acknowledged": True,
                "shards_acknowledged": True,
                "indices": [{"name": i.name, "blocked": True} for i in indices],
            },
            set(),
        )

    def _mget(self, call: Call) -> tuple[int, Any, set[str]]:
        target = call.parts[0] if len(call.parts) == 2 else None
        with self.cluster.lock:
            return (
                200,
                documents.mget(
                    self.cluster, target, call.json(), call.flag("realtime", True), call.includes()
                ),
                set(),
            )

    def _search(self, call: Call) -> tuple[int, Any, set[str]]:
        target = call.parts[0] if len(call.parts) == 2 else "*"
        with self.cluster.lock:
            return 200, documents.run_search(self.cluster, target, call.json()), set()

    def _get(self, call: Call) -> tuple[int, Any, set[str]]:
        with self.cluster.lock:
            found = documents.get_doc(
                self.cluster, call.parts[0], call.parts[2], call.flag("realtime", True), call.includes()
            )
        return (200 if found["found"] else 404), found, set()

    def _index(self, call: Call) -> tuple[int, Any, set[str]]:
        with self.cluster.lock:
            result = documents.index_doc(
                self.cluster,
                call.parts[0],
                call.parts[2],
                call.json(),
                op_type=call.params.get("op_type", "index"),
                if_seq_no=call.number("if_seq_no"),
                if_primary_term=call.number("if_primary_term"),
                require_alias=call.flag("require_alias"),
            )
        status = result.pop("status")
        return status, result, {result["_index"]}

    def _delete(self, call: Call) -> tuple[int, Any, set[str]]:
        with self.cluster.lock:
            status, result = documents.delete_doc(
                self.cluster,
                call.parts[0],
                call.parts[2],
                if_seq_no=call.number("if_seq_no"),
                if_primary_term=call.number("if_primary_term"),
            )
        result.pop("status")
        return status, result, {result["_index"]}

    def _refresh_api(self, call: Call) -> tuple[int, Any, set[str]]:
        with self.cluster.lock:
            indices = (
                self.cluster.resolve(call.parts[0])
                if len(call.parts) == 2
                else list(self.cluster.indices.values())
            )
            for index in indices:
                index.refresh()
        shards = {"total": 2 * len(indices), "successful": len(indices), "failed": 0}
        return 200, {"_shards": shards}, set()

    def _get_mapping(self, call: Call) -> tuple[int, Any, set[str]]:
        with self.cluster.lock:
            indices = (
                self.cluster.resolve(call.parts[0])
                if len(call.parts) == 2
                else list(self.cluster.indices.values())
            )
            return 200, {i.name: {"mappings": i.mappings} for i in indices}, set()

    def _get_settings(self, call: Call) -> tuple[int, Any, set[str]]:
        with self.cluster.lock:
            indices = self.cluster.resolve(call.parts[0])
            return (
                200,
                {
                    i.name: {
                        "settings": nested_settings(
                            {**i.settings, "index.uuid": i.uuid, "index.provided_name": i.name}
                        )
                    }
                    for i in indices
                },
                set(),
            )

    def _put_settings(self, call: Call) -> tuple[int, Any, set[str]]:
        with self.cluster.lock:
            self.cluster.put_settings(call.parts[0], call.json())
        return 200, {"acknowledged": True}, set()

    def _get_alias(self, call: Call) -> tuple[int, Any, set[str]]:
        name = call.parts[1]
        with self.cluster.lock:
            members = self.cluster.aliases.get(name)
            if not members:
                raise _RawError(404, {"error": f"alias [{name}] missing", "status": 404})
            return 200, {index: {"aliases": {name: props}} for index, props in members.items()}, set()

    def _update_aliases(self, call: Call) -> tuple[int, Any, set[str]]:
        with self.cluster.lock:
            self.cluster.update_aliases(call.json().get("actions", []))
        return 200, {"acknowledged": True, "errors": False}, set()

    def _put_template(self, call: Call) -> tuple[int, Any, set[str]]:
        with self.cluster.lock:
            self.cluster.put_template(call.parts[1], call.json())
        return 200, {"acknowledged": True}, set()

    def _delete_template(self, call: Call) -> tuple[int, Any, set[str]]:
        name = call.parts[1]
        with self.cluster.lock:
            if self.cluster.templates.pop(name, None) is None:
                raise errors.EsError(404, "resource_not_found_exception", f"index_template [{name}] missing")
        return 200, {"acknowledged": True}, set()

    def _get_template(self, call: Call) -> tuple[int, Any, set[str]]:
        name = call.parts[1]
        with self.cluster.lock:
            template = self.cluster.templates.get(name)
        if template is None:
            raise errors.EsError(
                404, "resource_not_found_exception", f"index template matching [{name}] not found"
            )
        return 200, {"index_templates": [{"name": name, "index_template": template}]}, set()

    def _reindex(self, call: Call) -> tuple[int, Any, set[str]]:
        if not call.flag("wait_for_completion", True):
            raise errors.illegal("the double runs reindex only with wait_for_completion=true")
        with self.cluster.lock:
            response, touched = documents.reindex(self.cluster, call.json())
        return 200, response, touched

    def _delete_by_query(self, call: Call) -> tuple[int, Any, set[str]]:
        by_query.check_params(call.params)
        with self.cluster.lock:
            return by_query.delete_by_query(self.cluster, call.parts[0], call.json(), call.params)

    def _exists(self, call: Call) -> tuple[int, Any, set[str]]:
        with self.cluster.lock:
            try:
                self.cluster.resolve(call.parts[0])
            except errors.EsError:
                return 404, None, set()
        return 200, None, set()

    def _create_index(self, call: Call) -> tuple[int, Any, set[str]]:
        with self.cluster.lock:
            index = self.cluster.create_index(call.parts[0], call.json())
        return 200, {"acknowledged": True, "shards_acknowledged": True, "index": index.name}, set()

    def _delete_index(self, call: Call) -> tuple[int, Any, set[str]]:
        with self.cluster.lock:
            self.cluster.delete_index(call.parts[0])
        return 200, {"acknowledged": True}, set()


def _matches(pattern: tuple[str, ...], parts: list[str]) -> bool:
    if len(pattern) != len(parts):
        return False
    for want, part in zip(pattern, parts, strict=True):
        if want.startswith("{"):
            if part.startswith("_"):
                return False
        elif want != part:
            return False
    return True


class _RawError(Exception):
    """A response whose body is not the usual error object (Elasticsearch has a few of those)."""

    def __init__(self, status: int, payload: dict[str, Any]) -> None:
        super().__init__(payload)
        self.status = status
        self.payload = payload
