"""The Elasticsearch indices: names, mappings, index templates and the mapping version.

Each kind of record (agents, configs) lives in one index behind a write alias (`opamp-agents`,
`opamp-configs`), created by `opamp-gateway migrate` from a composable index template. The gateway
only ever names the alias. The mapping version is kept in the template's `version` and in the
mapping's `_meta`; a gateway whose version is newer upgrades (new index, copy, alias swap, see
gateway/migrate.py), an older one keeps working because mapping changes are additive.

The agent document follows Fleet's `.fleet-agents` where the meaning is the same (`agent.id`,
`agent.version`, `type`, `enrolled_at`, `last_checkin`, `last_checkin_status`,
`local_metadata.host.hostname`, `tags`, `sequence_num`, `capabilities`, `health`,
`effective_config`); the gateway's own exact record is under `opamp` (see elasticsearch_documents.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# 2: ignore_above on every keyword filled from agent-supplied bytes; opamp.oversized; opamp.command_id.
# 3: opamp.duplicate_of, opamp.raw.available_components.
# 4: opamp.offered_settings_hash.
# 5: opamp.key_id, the agent key (group) an agent is bound to.
# 6: opamp.raw.connection_settings_status.
# 7: packages (reported names and status terms), opamp.raw.package_statuses,
#    opamp.offered_packages_hash, opamp.offered_packages_at.
# 8: opamp.credential and opamp.credential_kind, an agent's own credential (digests only).
AGENTS_MAPPING_VERSION = 8
# 2: `history`, the config's last versions (gateway/fleet/versions.py); `rollout_record`.
# 3: `kind`: "connection_settings" on a connection setting's document (elasticsearch_settings.py).
# 4: `package` (name, version, type) on a package's document (`kind: "package"`, elasticsearch_packages.py).
CONFIGS_MAPPING_VERSION = 4
META_KEY = "opamp_gateway"
# Above the built-in templates (logs-*-*, metrics-*-* at 100); ES refuses two overlapping templates
# of equal priority.
TEMPLATE_PRIORITY = 300
# Lucene refuses terms over 32 KiB; longer attribute values are kept in _source but not indexed.
IGNORE_ABOVE = 4096
CONFIGS_REFRESH_INTERVAL = "1s"
# `version.build_flavor` in `GET /` on Elastic Cloud Serverless ("default" elsewhere).
SERVERLESS_FLAVOR = "serverless"

_KEYWORD: dict[str, Any] = {"type": "keyword", "ignore_above": IGNORE_ABOVE}
_DATE: dict[str, Any] = {"type": "date"}
_NOT_INDEXED: dict[str, Any] = {"type": "object", "enabled": False}
_FLATTENED: dict[str, Any] = {"type": "flattened", "ignore_above": IGNORE_ABOVE}


def _object(**properties: dict[str, Any]) -> dict[str, Any]:
    return {"properties": properties}


AGENT_PROPERTIES: dict[str, Any] = {
    "type": {"type": "keyword"},
    # false: this _id is a uid that moved to `opamp.moved_to` (kept so old uids still resolve)
    "active": {"type": "boolean"},
    "agent": _object(id={"type": "keyword"}, type=_KEYWORD, version=_KEYWORD),
    "enrolled_at": _DATE,
    "last_checkin": _DATE,
    "last_checkin_status": {"type": "keyword"},
    "last_checkin_message": _KEYWORD,
    "local_metadata": _object(
        host=_object(hostname=_KEYWORD, arch=_KEYWORD),
        os=_object(type=_KEYWORD, description=_KEYWORD),
    ),
    "tags": _KEYWORD,
    "sequence_num": {"type": "unsigned_long"},
    "capabilities": {"type": "keyword"},
    "health": _object(
        healthy={"type": "boolean"},
        status=_KEYWORD,
        last_error=_KEYWORD,
        start_time=_DATE,
        status_time=_DATE,
        attributes=_NOT_INDEXED,
        components=_NOT_INDEXED,
    ),
    "effective_config": _object(hash={"type": "keyword"}, files=_NOT_INDEXED),
    "remote_config": _object(
        status={"type": "keyword"},
        # Agent-supplied bytes (hex): without ignore_above a hash of 16 KiB would be an immense term,
        # and Elasticsearch refuses the whole document for it.
        last_remote_config_hash=_KEYWORD,
        error_message=_KEYWORD,
        offered_hash={"type": "keyword"},
        offered_at=_DATE,
        failed_hash=_KEYWORD,
        in_sync={"type": "boolean"},
    ),
    "identifying_attributes": _FLATTENED,
    "non_identifying_attributes": _FLATTENED,
    # Both sets merged as the admin API filters them: text values, identifying wins a key clash.
    "attributes": _FLATTENED,
    # Lower-cased uid and attribute values, for the admin API's substring search `q`.
    "search_text": {"type": "wildcard"},
    "connection": _object(node={"type": "keyword"}, transport={"type": "keyword"}),
    # The agent's reported packages: their names, and one `<name>/<status>/<hash>` term each
    # (gateway/fleet/package_status.py) for the admin API's ?package_status= filter.
    "packages": _object(names=_KEYWORD, states=_KEYWORD),
    # The exact record: what the gateway reads back. Floats keep every bit (dates keep milliseconds).
    "opamp": _object(
        enrolled_at={"type": "double"},
        last_seen={"type": "double"},
        capabilities_bitmask={"type": "unsigned_long"},
        pending_command={"type": "long"},
        command_id={"type": "keyword"},
        key_id={"type": "keyword"},
        previous_instance_uids={"type": "keyword"},
        moved_to={"type": "keyword"},
        duplicate_of={"type": "keyword"},
        offered_at={"type": "double"},
        # The hash (hex) of the connection settings last offered (gateway/opamp/heartbeat.py).
        offered_settings_hash={"type": "keyword"},
        # The all_packages_hash (hex) last offered, and when (gateway/opamp/package_offers.py).
        offered_packages_hash={"type": "keyword"},
        offered_packages_at={"type": "double"},
        # Reported parts left out because the document would exceed MAX_DOCUMENT_BYTES.
        oversized={"type": "keyword"},
        # The agent's credential record (gateway/fleet/credentials.py: digests and flags, never a
        # secret), and its kind (shared, per_agent, revoked) for the admin API's filter; absent: shared.
        credential=_NOT_INDEXED,
        credential_kind={"type": "keyword"},
        raw=_object(
            description={"type": "binary"},
            health={"type": "binary"},
            effective_config={"type": "binary"},
            remote_config_status={"type": "binary"},
            available_components={"type": "binary"},
            connection_settings_status={"type": "binary"},
            package_statuses={"type": "binary"},
        ),
    ),
}

CONFIG_PROPERTIES: dict[str, Any] = {
    "name": {"type": "keyword"},
    "kind": {"type": "keyword"},
    "version": {"type": "long"},
    "hash": {"type": "keyword"},
    "priority": {"type": "integer"},
    "created_at": _DATE,
    "updated_at": _DATE,
    "selector": _NOT_INDEXED,
    "spec": _NOT_INDEXED,
    "opamp": _object(created_at={"type": "double"}, updated_at={"type": "double"}),
    "history": _NOT_INDEXED,
    "rollout_record": _NOT_INDEXED,
    "package": _object(name={"type": "keyword"}, version={"type": "keyword"}, type={"type": "keyword"}),
}


@dataclass(frozen=True)
class IndexSpec:
    """One kind of index: its alias, what `migrate` creates for it, and at which mapping version."""

    kind: str
    alias: str
    version: int
    properties: dict[str, Any]
    refresh_interval: str

    @property
    def template_name(self) -> str:
        return self.alias

    @property
    def pattern(self) -> str:
        return f"{self.alias}-*"

    def index_name(self, number: int) -> str:
        return f"{self.alias}-{number:06d}"

    def index_number(self, index: str) -> int | None:
        """The generation number of one of this alias' indices, or None for any other name."""
        prefix = f"{self.alias}-"
        suffix = index[len(prefix) :]
        if not index.startswith(prefix) or len(suffix) != 6 or not suffix.isdigit():
            return None
        return int(suffix)

    @property
    def meta(self) -> dict[str, Any]:
        return {META_KEY: {"kind": self.kind, "mapping_version": self.version}}

    def mappings(self) -> dict[str, Any]:
        return {"dynamic": "strict", "_meta": self.meta, "properties": self.properties}

    def settings(self, serverless: bool = False) -> dict[str, Any]:
        """The index settings `migrate` gives the indices. Elastic Cloud Serverless manages shards and
        replicas itself and refuses both settings (400), so a Serverless project gets neither."""
        if serverless:
            return {"index": {"refresh_interval": self.refresh_interval}}
        return {
            # One primary: 1M agents is a few GB, and every aggregation fans out per shard.
            "index": {
                "number_of_shards": 1,
                "auto_expand_replicas": "0-1",
                "refresh_interval": self.refresh_interval,
            }
        }

    def template(self, serverless: bool = False) -> dict[str, Any]:
        """The body of `PUT _index_template/<alias>`."""
        return {
            "index_patterns": [self.pattern],
            "priority": TEMPLATE_PRIORITY,
            "version": self.version,
            "_meta": {**self.meta[META_KEY], "managed_by": "opamp-gateway migrate"},
            "template": {"settings": self.settings(serverless), "mappings": self.mappings()},
        }


def mapping_version(mappings: dict[str, Any]) -> int | None:
    """The version recorded in an index's mappings, None if the index was not made by `migrate`."""
    meta = mappings.get("_meta", {}).get(META_KEY, {})
    version = meta.get("mapping_version") if isinstance(meta, dict) else None
    return version if isinstance(version, int) else None


def agents_index(alias: str, refresh_interval: str) -> IndexSpec:
    return IndexSpec("agents", alias, AGENTS_MAPPING_VERSION, AGENT_PROPERTIES, refresh_interval)


def configs_index(alias: str) -> IndexSpec:
    return IndexSpec("configs", alias, CONFIGS_MAPPING_VERSION, CONFIG_PROPERTIES, CONFIGS_REFRESH_INTERVAL)
