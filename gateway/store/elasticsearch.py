"""The production store: agent records and configs in Elasticsearch, any number of nodes, one cluster.

- Reads are realtime `_mget`s by `_id` (never a search): every get() started in the same event-loop
  turn shares one request, and a moved uid costs one more hop.
- Writes arrive already coalesced per agent by the node's Writer (gateway/store/writer.py: bounded
  queue, flush by size or interval, durable waits); write() turns one batch into one `_bulk`
  (elasticsearch_writes.py explains the optimistic concurrency), re-reads documents that changed
  under it (409), and retries rejected items (429, 5xx) with jittered backoff before giving up with
  StoreUnavailable, which the Writer keeps for later and the circuit breaker counts.
- The inventory (list_agents, summary) and pending_commands() are searches: they see what the index
  last refreshed (`--elasticsearch-refresh-interval`), unlike get().
- The gateway never creates indices: open() and ping() check that `opamp-gateway migrate` made the
  aliases at a mapping version this gateway can use.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import random
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from elastic_transport import ApiResponse
from elasticsearch import AsyncElasticsearch

from gateway.fleet.agent import AgentState, AgentWrite, uid_str
from gateway.fleet.configs import Config, ConfigRequest
from gateway.fleet.connection_settings import ConnectionSettings, SettingsSpec
from gateway.fleet.credentials import AgentCredential, BadCredentialRecord
from gateway.fleet.packages import Package, PackageRequest, PackageVersion
from gateway.fleet.rollout_record import Rollout
from gateway.fleet.versions import ConfigVersion
from gateway.store import elasticsearch_queries as queries
from gateway.store.base import (
    MAX_FORGET_BATCH,
    MAX_PAGE_SIZE,
    MAX_PENDING_COMMANDS,
    AgentPage,
    AgentQuery,
    FleetSummary,
    StoredRollout,
    StoreError,
    StoreUnavailable,
    decode_cursor,
    encode_cursor,
)
from gateway.store.elasticsearch_client import (
    CLIENT_ERRORS,
    NotMigrated,
    error_type,
    is_transient,
    make_client,
    store_error,
)
from gateway.store.elasticsearch_configs import CONFIGS, ConfigsIndex
from gateway.store.elasticsearch_documents import Moved, UnreadableDocument, agent_from_source
from gateway.store.elasticsearch_packages import PACKAGES
from gateway.store.elasticsearch_schema import agents_index, configs_index, mapping_version
from gateway.store.elasticsearch_settings import SettingsDocuments
from gateway.store.elasticsearch_writes import (
    Action,
    Known,
    KnownDocuments,
    credential_fields,
    plan,
    rounds,
)

if TYPE_CHECKING:
    from gateway.settings import Settings

logger = logging.getLogger("gateway.store.elasticsearch")

MAX_ALIAS_HOPS = 4
# Item-level retries of 429/5xx inside one write(), before the Writer's own retries take over.
_ITEM_RETRY_DELAYS = (0.05, 0.2, 0.5)
_MAX_CONFLICT_ROUNDS = 8
# Item errors of a conditional write to a remembered concrete index that no longer takes writes.
_MOVED = "moved: "
_GONE_INDEX = frozenset({"cluster_block_exception", "index_not_found_exception", "index_closed_exception"})
# Ids per `_mget`: bounds one response (about 2 KB of _source per agent).
_MGET_IDS = 1000
# Below aiohttp's 1 MiB "large body" threshold: one request body is written to the socket in one go.
_MAX_BULK_BYTES = (1 << 20) - (16 << 10)
# Only what agent_from_source() reads: effective config bodies and the Fleet-style copies stay put.
SOURCE_FIELDS = [
    "active",
    "agent.id",
    "sequence_num",
    "last_checkin_status",
    "connection",
    "remote_config.offered_hash",
    "remote_config.failed_hash",
    "opamp",
]


class ElasticsearchStore:
    """`Store` on an Elasticsearch cluster. Construct, `await open()`, use, `await close()`."""

    def __init__(
        self,
        client: AsyncElasticsearch,
        *,
        agents_alias: str = "opamp-agents",
        configs_alias: str = "opamp-configs",
        refresh: str | None = None,
        on_request: Callable[[str], None] | None = None,
        on_bulk: Callable[[int], None] | None = None,
        on_rejected: Callable[[], None] | None = None,
        on_oversized: Callable[[], None] | None = None,
    ) -> None:
        self._client = client
        self.agents_alias = agents_alias
        self.configs_alias = configs_alias
        # "wait_for" makes every write visible to searches before write() returns: for tests only,
        # since it ties each flush to the index's refresh cycle.
        self._refresh = refresh
        # Counting callbacks (metrics): each request by operation, each _bulk's size, each document
        # refused for good.
        self._on_request = on_request
        self._on_bulk = on_bulk
        self._on_rejected = on_rejected
        self._on_oversized = on_oversized
        self._known = KnownDocuments()
        self._configs = ConfigsIndex(client, configs_alias, self._request, CONFIGS)
        self._packages = ConfigsIndex(client, configs_alias, self._request, PACKAGES)
        self._settings = SettingsDocuments(client, configs_alias, self._request)
        self._pending_gets: dict[bytes, list[asyncio.Future[AgentState | None]]] = {}
        self._get_batches: set[asyncio.Task[None]] = set()

    @classmethod
    def from_settings(
        cls,
        settings: Settings,
        *,
        on_request: Callable[[str], None] | None = None,
        on_bulk: Callable[[int], None] | None = None,
        on_rejected: Callable[[], None] | None = None,
        on_oversized: Callable[[], None] | None = None,
    ) -> ElasticsearchStore:
        return cls(
            make_client(settings),
            agents_alias=settings.elasticsearch_agents_alias,
            configs_alias=settings.elasticsearch_configs_alias,
            on_request=on_request,
            on_bulk=on_bulk,
            on_rejected=on_rejected,
            on_oversized=on_oversized,
        )

    # -- lifecycle ---------------------------------------------------------------------------------

    async def open(self) -> None:
        """Check the cluster and the aliases once. Problems are logged, never raised: the node starts
        unready and becomes ready when Elasticsearch is reachable and migrated."""
        try:
            await self.ping()
        except StoreError as exc:
            logger.error("Elasticsearch is not usable yet (readiness fails until it is): %s", exc)

    async def close(self) -> None:
        for task in list(self._get_batches):
            await asyncio.gather(task, return_exceptions=True)
        await self._client.close()

    async def ping(self) -> None:
        aliases = f"{self.agents_alias},{self.configs_alias}"
        body = (await self._request("ping", self._client.indices.get_mapping(index=aliases))).body
        specs = [agents_index(self.agents_alias, ""), configs_index(self.configs_alias)]
        found = {spec.alias: False for spec in specs}
        for index, info in body.items():
            spec = next((s for s in specs if s.index_number(index) is not None), None)
            if spec is None:
                continue
            found[spec.alias] = True
            version = mapping_version(info.get("mappings", {}))
            if version is None or version < spec.version:
                raise NotMigrated(
                    f"index {index} has mapping version {version}, this gateway needs {spec.version}: "
                    "run `opamp-gateway migrate` of this gateway version"
                )
        missing = [alias for alias, ok in found.items() if not ok]
        if missing:
            raise NotMigrated(f"no index behind {', '.join(missing)}: run `opamp-gateway migrate`")

    # -- plumbing ----------------------------------------------------------------------------------

    async def _request(self, operation: str, call: Awaitable[ApiResponse[Any]]) -> Any:
        """Await one client call; count it; turn its failure into StoreError/StoreUnavailable.
        Returns the response (statuses passed as `ignore_status` come back instead of raising)."""
        if self._on_request is not None:
            self._on_request(operation)
        try:
            return await call
        except CLIENT_ERRORS as exc:
            raise store_error(exc, operation) from exc

    # -- reads -------------------------------------------------------------------------------------

    async def get(self, uid: bytes) -> AgentState | None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[AgentState | None] = loop.create_future()
        if not self._pending_gets:
            task = loop.create_task(self._get_batch())
            self._get_batches.add(task)
            task.add_done_callback(self._get_batches.discard)
        self._pending_gets.setdefault(uid, []).append(future)
        return await future

    async def _get_batch(self) -> None:
        await asyncio.sleep(0)  # let the rest of this turn's callers join the batch
        batch, self._pending_gets = self._pending_gets, {}
        try:
            found = await self._resolve(list(batch))
        except Exception as exc:
            for futures in batch.values():
                for future in futures:
                    if not future.done():
                        future.set_exception(exc)
            return
        for uid, futures in batch.items():
            for future in futures:
                if not future.done():
                    future.set_result(found.get(uid))

    async def _resolve(self, uids: list[bytes]) -> dict[bytes, AgentState]:
        """The live record for each uid, following moves."""
        found: dict[bytes, AgentState] = {}
        wanted = {uid: uid for uid in uids}  # uid asked for -> uid to read next
        for _ in range(MAX_ALIAS_HOPS + 1):
            if not wanted:
                break
            docs = await self._fetch(set(wanted.values()))
            next_wanted: dict[bytes, bytes] = {}
            for asked, target in wanted.items():
                doc = docs.get(target)
                if isinstance(doc, Moved):
                    next_wanted[asked] = doc.to
                elif doc is not None:
                    found[asked] = doc
            wanted = next_wanted
        return found

    async def _fetch(self, uids: Collection[bytes]) -> dict[bytes, AgentState | Moved]:
        """Realtime `_mget`s of at most _MGET_IDS ids; remembers each document's sequence number."""
        ordered = list(uids)
        out: dict[bytes, AgentState | Moved] = {}
        for start in range(0, len(ordered), _MGET_IDS):
            out.update(await self._mget(ordered[start : start + _MGET_IDS]))
        return out

    async def _mget(self, uids: list[bytes]) -> dict[bytes, AgentState | Moved]:
        ids = [uid_str(uid) for uid in uids]
        response = await self._request(
            "mget",
            self._client.mget(index=self.agents_alias, ids=ids, source_includes=SOURCE_FIELDS, realtime=True),
        )
        body = response.body
        out: dict[bytes, AgentState | Moved] = {}
        for uid, doc in zip(uids, body["docs"], strict=True):
            if "error" in doc:
                raise store_error_from_item(doc["error"], 500, "mget")
            if not doc.get("found"):
                self._known.forget(uid)
                continue
            try:
                record = agent_from_source(doc["_source"])
            except UnreadableDocument as exc:
                raise StoreError(f"agent document {doc['_id']} in {doc['_index']}: {exc}") from exc
            out[uid] = record
            self._known.put(uid, _known(doc, record))
        return out

    async def list_agents(self, query: AgentQuery, now: float, offline_after: float) -> AgentPage:
        after = decode_cursor(query.cursor) if query.cursor is not None else None
        limit = max(1, min(int(query.limit), MAX_PAGE_SIZE))
        search: dict[str, Any] = {
            "query": queries.agents_query(query, now, offline_after),
            "sort": [{"agent.id": "asc"}],
            "size": limit + 1,  # one more than the page: it tells whether there is a next page
            "track_total_hits": False,
            "_source": {"includes": SOURCE_FIELDS},
        }
        if after is not None:
            search["search_after"] = [after]
        body = (await self._request("search", self._client.search(index=self.agents_alias, body=search))).body
        hits = body["hits"]["hits"]
        agents: list[AgentState] = []
        credentials: dict[bytes, AgentCredential] = {}
        for hit in hits[:limit]:
            record = agent_from_source(hit["_source"])
            if isinstance(record, AgentState):
                agents.append(record)
                credential = _credential_of(hit["_source"], hit["_id"])
                if credential is not None:
                    credentials[record.instance_uid] = credential
        next_cursor = encode_cursor(hits[limit - 1]["_id"]) if len(hits) > limit else None
        return AgentPage(agents=agents, next_cursor=next_cursor, credentials=credentials)

    # -- per-agent credentials ---------------------------------------------------------------------

    async def get_credentials(self, uids: Sequence[bytes]) -> dict[bytes, AgentCredential]:
        """Realtime `_mget`s of the credential records alone (a moved uid's stub has none)."""
        wanted = list(dict.fromkeys(uids))
        out: dict[bytes, AgentCredential] = {}
        for start in range(0, len(wanted), _MGET_IDS):
            for uid, (credential, _doc) in (
                await self._credential_docs(wanted[start : start + _MGET_IDS])
            ).items():
                if credential is not None:
                    out[uid] = credential
        return out

    async def _credential_docs(
        self, uids: list[bytes]
    ) -> dict[bytes, tuple[AgentCredential | None, Mapping[str, Any]]]:
        """{uid: (credential record, the document's metadata)} for the live agent documents found."""
        response = await self._request(
            "mget",
            self._client.mget(
                index=self.agents_alias,
                ids=[uid_str(uid) for uid in uids],
                source_includes=["active", "opamp.credential"],
                realtime=True,
            ),
        )
        out: dict[bytes, tuple[AgentCredential | None, Mapping[str, Any]]] = {}
        for uid, doc in zip(uids, response.body["docs"], strict=True):
            if "error" in doc:
                raise store_error_from_item(doc["error"], 500, "mget")
            if not doc.get("found") or doc.get("_source", {}).get("active") is False:
                continue
            out[uid] = (_credential_of(doc["_source"], doc["_id"]), doc)
        return out

    async def put_credential(
        self, uid: bytes, expected: AgentCredential | None, new: AgentCredential | None
    ) -> bool:
        """Read the document (realtime), compare, then a partial update conditional on the sequence
        number read: a write in between (this node's writer, another node) makes it 409, and it
        reads and compares again."""
        for _ in range(_MAX_CONFLICT_ROUNDS):
            found = (await self._credential_docs([uid])).get(uid)
            if found is None or found[0] != expected:
                return False
            doc = found[1]
            header = {
                "update": {
                    "_id": uid_str(uid),
                    "_index": doc["_index"],
                    "if_seq_no": doc["_seq_no"],
                    "if_primary_term": doc["_primary_term"],
                    "require_alias": False,
                }
            }
            body = {"doc": {"opamp": credential_fields(new)}}
            item = (await self._bulk_request([_ndjson(header), _ndjson(body)], 1))[0]
            status = int(item.get("status", 500))
            if 200 <= status < 300:
                known = self._known.get(uid)
                if known is not None and known.moved_to is None:
                    self._known.put(
                        uid,
                        dataclasses.replace(
                            known,
                            seq_no=int(item["_seq_no"]),
                            primary_term=int(item["_primary_term"]),
                            index=str(item.get("_index", known.index)),
                            credential=new,
                        ),
                    )
                return True
            kind = error_type({"error": item.get("error", {})})
            if status == 409 or kind == "document_missing_exception":
                continue
            if kind == "index_not_found_exception":
                raise NotMigrated(f"Elasticsearch update: {kind}: run `opamp-gateway migrate`")
            reason = f"Elasticsearch credential update: HTTP {status} {kind}"
            raise (
                StoreUnavailable(reason)
                if is_transient(status, kind) or kind in _GONE_INDEX
                else StoreError(reason)
            )
        raise StoreUnavailable(f"the credential record of agent {uid_str(uid)} kept changing")

    async def pending_commands(self, limit: int) -> dict[bytes, int]:
        body = queries.pending_commands_body(max(0, min(int(limit), MAX_PENDING_COMMANDS)))
        response = await self._request("search", self._client.search(index=self.agents_alias, body=body))
        try:
            return queries.parse_pending_commands(response.body)
        except queries.UnreadableHit as exc:
            raise StoreError(f"pending commands: {exc} is not an agent document of this gateway") from exc

    async def summary(self, now: float, offline_after: float) -> FleetSummary:
        response = await self._request(
            "search",
            self._client.search(index=self.agents_alias, body=queries.summary_body(now, offline_after)),
        )
        return queries.parse_summary(response.body)

    # -- writes ------------------------------------------------------------------------------------

    async def write(self, writes: Sequence[AgentWrite]) -> None:
        for group in rounds(writes):
            await self._write_group([writes[i] for i in group])

    async def _write_group(self, writes: list[AgentWrite]) -> None:
        todo = list(range(len(writes)))
        conflicts = transient = 0
        while todo:
            actions = [a for i in todo for a in plan(i, writes[i], self._known.get)]
            if not actions:
                return
            items = await self._bulk(actions)
            again: set[int] = set()
            reread: set[bytes] = set()
            busy: list[str] = []
            for action, item in zip(actions, items, strict=True):
                outcome = self._settle(action, item)
                if outcome == "conflict":
                    reread.add(action.uid)
                    again.add(action.write)
                elif outcome is not None and outcome.startswith(_MOVED):
                    reread.add(action.uid)
                    busy.append(outcome.removeprefix(_MOVED))
                    again.add(action.write)
                elif outcome is not None:
                    busy.append(outcome)
                    again.add(action.write)
            if reread:
                conflicts += 1
                if conflicts > _MAX_CONFLICT_ROUNDS:
                    raise StoreUnavailable(f"agent documents kept changing under {len(reread)} writes")
                await self._fetch(reread)
            if busy:
                if transient >= len(_ITEM_RETRY_DELAYS):
                    raise StoreUnavailable(f"Elasticsearch rejected {len(busy)} bulk items: {busy[0]}")
                delay = _ITEM_RETRY_DELAYS[transient]
                transient += 1
                await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            todo = sorted(again)

    async def _bulk(self, actions: list[Action]) -> list[Mapping[str, Any]]:
        """Send the actions as few `_bulk` requests of at most _MAX_BULK_BYTES as possible."""
        items: list[Mapping[str, Any]] = []
        lines: list[bytes] = []
        size = count = 0
        for action in actions:
            pair = [_ndjson(action.header()), _ndjson(action.body)]
            added = len(pair[0]) + len(pair[1])
            if lines and size + added > _MAX_BULK_BYTES:
                items += await self._bulk_request(lines, count)
                lines, size, count = [], 0, 0
            lines += pair
            size += added
            count += 1
        if lines:
            items += await self._bulk_request(lines, count)
        return items

    async def _bulk_request(self, lines: list[bytes], count: int) -> list[Mapping[str, Any]]:
        if self._on_bulk is not None:
            self._on_bulk(count)
        response = await self._request(
            "bulk",
            self._client.options(ignore_status=413).bulk(
                index=self.agents_alias,
                # Pre-serialized lines (the client passes bytes through): sized before they are sent.
                operations=cast(Any, lines),
                require_alias=True,
                refresh=self._refresh,
            ),
        )
        if response.meta.status == 413:
            return await self._too_large(lines, count)
        return [next(iter(item.values())) for item in response.body["items"]]

    async def _too_large(self, lines: list[bytes], count: int) -> list[Mapping[str, Any]]:
        """The cluster's http.max_content_length is below this request. Sending it again cannot
        help: halves are sent instead, and a single action too large is refused for good (as a
        mapping error is), so it never holds up the queue or counts toward the circuit breaker."""
        if count > 1:
            half = 2 * (count // 2)
            return await self._bulk_request(lines[:half], count // 2) + await self._bulk_request(
                lines[half:], count - count // 2
            )
        size = sum(len(line) for line in lines)
        return [{"status": 413, "error": {"type": "request_entity_too_large", "reason": f"{size} bytes"}}]

    def _settle(self, action: Action, item: Mapping[str, Any]) -> str | None:
        """Record a finished action; 'conflict', a transient reason to retry, or None when done."""
        status = int(item.get("status", 500))
        if 200 <= status < 300:
            if self._on_oversized is not None and action.body.get("opamp", {}).get("oversized"):
                self._on_oversized()
            after = action.after
            self._known.put(
                action.uid,
                Known(
                    int(item["_seq_no"]),
                    int(item["_primary_term"]),
                    after.last_seen,
                    after.pending_command,
                    after.command_id,
                    after.moved_to,
                    str(item.get("_index", "")),
                    after.key_id,
                    after.credential,
                ),
            )
            return None
        error = item.get("error", {})
        kind = str(error.get("type", "")) if isinstance(error, dict) else ""
        if status == 409 or kind == "document_missing_exception":
            self._known.forget(action.uid)
            return "conflict"
        if kind in _GONE_INDEX and action.condition is not None and action.condition.index:
            # The index this version was seen in is blocked (rolled over, or being copied) or gone:
            # where the document lives now is read through the alias, after a pause.
            self._known.forget(action.uid)
            return f"{_MOVED}HTTP {status} {kind}"
        if is_transient(status, kind):
            return f"HTTP {status} {kind}"
        if kind == "index_not_found_exception":
            raise NotMigrated(f"Elasticsearch bulk: {kind}: run `opamp-gateway migrate`")
        # A document the mapping refuses is a bug in this gateway (or a mapping older than it):
        # retrying cannot help, and holding it would block every later write of the batch.
        logger.error(
            "Elasticsearch refused a %s of an agent document (dropped): HTTP %d %s",
            action.kind,
            status,
            error,
            extra={"instance_uid": uid_str(action.uid)},
        )
        if self._on_rejected is not None:
            self._on_rejected()
        return None

    # -- configs -----------------------------------------------------------------------------------

    # -- retention ---------------------------------------------------------------------------------

    async def forget(self, uid: bytes) -> bytes | None:
        """Realtime: deletes the document read through `uid` (a moved uid's stub too), in the index
        it was read from."""
        state = await self.get(uid)
        if state is None:
            return None
        target = state.instance_uid
        for doc_uid in {uid, target}:
            known = self._known.get(doc_uid)
            index = known.index if known is not None and known.index else self.agents_alias
            await self._request(
                "delete",
                self._client.options(ignore_status=404).delete(
                    index=index, id=uid_str(doc_uid), refresh=self._refresh
                ),
            )
            self._known.forget(doc_uid)
        return target

    async def forget_unseen(self, before: float, limit: int) -> int:
        """One `_delete_by_query` over the refreshed view, `conflicts=proceed`: a record written since
        that refresh (the agent came back, or another node deleted it first) is a version conflict,
        skipped, never an error."""
        bound = max(0, min(int(limit), MAX_FORGET_BATCH))
        if bound == 0:
            return 0
        response = await self._request(
            "delete_by_query",
            self._client.delete_by_query(
                index=self.agents_alias,
                query=queries.unseen_before(before),
                conflicts="proceed",
                max_docs=bound,
                refresh=True,
            ),
        )
        return int(response.body["deleted"])

    async def list_configs(self) -> list[Config]:
        return await self._configs.list()

    async def get_config(self, name: str) -> Config | None:
        return await self._configs.get(name)

    async def put_config(self, name: str, request: ConfigRequest, now: float) -> tuple[Config, bool]:
        return await self._configs.put(name, request, now)

    async def delete_config(self, name: str, expected_version: int | None = None) -> bool:
        return await self._configs.delete(name, expected_version)

    async def list_connection_settings(self) -> list[ConnectionSettings]:
        return await self._settings.list()

    async def get_connection_settings(self, name: str) -> ConnectionSettings | None:
        return await self._settings.get(name)

    async def put_connection_settings(
        self, name: str, spec: SettingsSpec, now: float
    ) -> tuple[ConnectionSettings, bool]:
        return await self._settings.put(name, spec, now)

    async def delete_connection_settings(self, name: str) -> bool:
        return await self._settings.delete(name)

    async def config_versions(self, name: str) -> list[ConfigVersion]:
        return await self._configs.versions(name)

    async def get_rollout(self, name: str) -> StoredRollout | None:
        return await self._configs.get_rollout(name)

    async def list_rollouts(self) -> list[Rollout]:
        return await self._configs.list_rollouts()

    async def put_rollout(self, rollout: Rollout, expected_rev: str | None) -> str | None:
        return await self._configs.put_rollout(rollout, expected_rev)

    async def list_packages(self) -> list[Package]:
        return await self._packages.list()

    async def get_package(self, name: str) -> Package | None:
        return await self._packages.get(name)

    async def put_package(self, name: str, request: PackageRequest, now: float) -> tuple[Package, bool]:
        return await self._packages.put(name, request, now)

    async def delete_package(self, name: str, expected_version: int | None = None) -> bool:
        return await self._packages.delete(name, expected_version)

    async def package_versions(self, name: str) -> list[PackageVersion]:
        return await self._packages.versions(name)

    async def get_package_rollout(self, name: str) -> StoredRollout | None:
        return await self._packages.get_rollout(name)

    async def list_package_rollouts(self) -> list[Rollout]:
        return await self._packages.list_rollouts()

    async def put_package_rollout(self, rollout: Rollout, expected_rev: str | None) -> str | None:
        return await self._packages.put_rollout(rollout, expected_rev)


def _ndjson(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def _known(doc: Mapping[str, Any], record: AgentState | Moved) -> Known:
    seq_no, term, index = int(doc["_seq_no"]), int(doc["_primary_term"]), str(doc.get("_index", ""))
    if isinstance(record, Moved):
        return Known(seq_no, term, moved_to=record.to, index=index)
    return Known(
        seq_no,
        term,
        record.last_seen,
        record.pending_command,
        record.command_id,
        index=index,
        key_id=record.key_id,
        credential=_credential_of(doc["_source"], doc["_id"]),
    )


def _credential_of(source: Mapping[str, Any], doc_id: str) -> AgentCredential | None:
    raw = (source.get("opamp") or {}).get("credential")
    if raw is None:
        return None
    try:
        return AgentCredential.from_json(raw)
    except BadCredentialRecord as exc:
        raise StoreError(f"agent document {doc_id}: {exc}") from exc


def store_error_from_item(error: object, status: int, what: str) -> StoreError:
    kind = error_type({"error": error})
    if kind == "index_not_found_exception":
        return NotMigrated(f"Elasticsearch {what}: {kind}: run `opamp-gateway migrate`")
    reason = f"Elasticsearch {what}: {kind or error}"
    return StoreUnavailable(reason) if is_transient(status, kind) else StoreError(reason)
