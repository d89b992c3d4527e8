"""Agent records and configs as Elasticsearch documents, and back.

An agent document has two parts. The Fleet-style fields (`agent.*`, `last_checkin*`, `health`,
`effective_config`, the attribute maps...) are derived from the record for operators and for the
admin API's queries. Everything the gateway reads back is under `opamp`: the sub-messages as their
exact protobuf bytes (`binary`: stored, not indexed) and the times as doubles, so a record survives the
round trip bit for bit (dates would keep only milliseconds).

A uid that moved (RequestInstanceUid) keeps a small document with `active: false` and
`opamp.moved_to`, so old uids resolve with a GET by `_id`, like `.fleet-agents` keeps re-enrolled
agents inactive.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from gateway.fleet.agent import AgentState, Transport, facts, uid_str
from gateway.fleet.configs import Config, spec_from_json, spec_json
from gateway.fleet.package_status import MAX_TERM_NAME, MAX_TERMS, package_terms
from gateway.fleet.render import config_map_json, health_json, remote_config_json, timestamp
from gateway.fleet.versions import ConfigVersion
from gateway.opamp.capabilities import capability_names
from gateway.proto import opamp_pb2 as pb

AGENT_TYPE = "OPAMP"
# Elasticsearch refuses a flattened value nested deeper than its depth_limit (20); deeper parts of an
# attribute are indexed as their JSON text instead.
_MAX_DEPTH = 10
# Longer keys are left out of the indexed copies (Lucene refuses a key+value term over 32 KiB).
_MAX_KEY = 1024
# The substring search field holds the first this many characters.
SEARCH_TEXT_LIMIT = 8192
# The size bound of one agent document's JSON. Far below http.max_content_length (100 MiB), which
# a whole `_bulk` request must stay under, and small enough that rewriting it on a heartbeat is
# bearable. An agent whose reports exceed it is stored without its largest reported parts, named in
# `opamp.oversized`.
MAX_DOCUMENT_BYTES = 8 << 20
# The rendered copy of an effective config (`effective_config.files`, for operators browsing the
# index) is kept only up to this many bytes of config: Elasticsearch rewrites the whole document on
# every update, heartbeats included, and above this the copy is most of what each heartbeat rewrites.
# The admin API renders from the exact bytes in `opamp.raw`, which are always kept.
FILES_COPY_LIMIT = 64 << 10
# Reported parts, in the order they are dropped when equally large (never the identity).
REPORTED_PARTS = (
    "effective_config",
    "health",
    "remote_config_status",
    "description",
    "available_components",
    "package_statuses",
)


class UnreadableDocument(ValueError):
    """A document that is not one this gateway wrote (or a newer gateway changed incompatibly)."""


@dataclass(frozen=True, slots=True)
class Moved:
    """The document at a uid that moved: the record lives on under `to`."""

    to: bytes


def checkin_status(state: AgentState, healthy: bool | None) -> str:
    """Fleet's `last_checkin_status`: what the agent said last, before time makes it `offline`."""
    if state.disconnected:
        return "disconnected"
    return "error" if healthy is False else "online"


def _b64(data: bytes | None) -> str | None:
    return None if data is None else base64.b64encode(data).decode("ascii")


def _unb64(text: object) -> bytes | None:
    if text is None:
        return None
    if not isinstance(text, str):
        raise UnreadableDocument(f"expected base64 text, got {type(text).__name__}")
    return base64.b64decode(text)


def _text_or_none(value: str) -> str | None:
    return value or None


def _indexable_key(key: str) -> bool:
    return "\0" not in key and len(key) <= _MAX_KEY


def indexable(value: Any, depth: int = 0) -> Any:
    """A copy Elasticsearch accepts in any field: strict JSON (no NaN or Infinity) and, for flattened
    fields, no NUL in keys and bounded nesting. The exact record is kept in `opamp.raw` anyway."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)  # "nan", "inf", "-inf": scalar_text() gives the same for filters
    if isinstance(value, list):
        return [indexable(v, depth) for v in value]
    if isinstance(value, dict):
        if depth >= _MAX_DEPTH:
            return json.dumps(value, sort_keys=True, default=str)
        return {k: indexable(v, depth + 1) for k, v in value.items() if _indexable_key(k)}
    return value


def _health(state: AgentState) -> tuple[dict[str, Any] | None, str | None]:
    if state.health is None:
        return None, None
    rendered = health_json(pb.ComponentHealth.FromString(state.health))
    message = rendered["last_error"] or rendered["status"] or None
    return indexable(rendered), message


def _remote_config(state: AgentState) -> dict[str, Any] | None:
    out: dict[str, Any] = {}
    if state.remote_config_status is not None:
        out.update(remote_config_json(state.remote_config_status))
    if state.offered_config_hash is not None:
        out["offered_hash"] = state.offered_config_hash.hex()
        out["offered_at"] = timestamp(state.offered_at) if state.offered_at else None
        # What operators filter on for drift: the agent reports applying what it was last offered.
        out["in_sync"] = (
            out.get("status") == "APPLIED" and out.get("last_remote_config_hash") == out["offered_hash"]
        )
    if state.failed_config_hash is not None:
        out["failed_hash"] = state.failed_config_hash.hex()
    return out or None


def agent_document(state: AgentState) -> dict[str, Any]:
    derived = facts(state)
    uid = state.uid
    health, message = _health(state)
    attrs = derived.attributes
    effective: dict[str, Any] | None = None
    if state.effective_config is not None:
        effective = {"hash": hashlib.sha256(state.effective_config).hexdigest()}
        if len(state.effective_config) <= FILES_COPY_LIMIT:
            config = pb.EffectiveConfig.FromString(state.effective_config)
            effective["files"] = config_map_json(config.config_map)
    return {
        "type": AGENT_TYPE,
        "active": True,
        "agent": {
            "id": uid,
            "type": _text_or_none(derived.agent_type),
            "version": _text_or_none(derived.agent_version),
        },
        "enrolled_at": timestamp(state.enrolled_at),
        "last_checkin": timestamp(state.last_seen),
        "last_checkin_status": checkin_status(state, derived.healthy),
        "last_checkin_message": message,
        "local_metadata": {
            "host": {"hostname": _text_or_none(derived.host_name), "arch": attrs.get("host.arch")},
            "os": {"type": _text_or_none(derived.os_type), "description": attrs.get("os.description")},
        },
        "tags": [derived.agent_type] if derived.agent_type else [],
        "sequence_num": state.sequence_num,
        "capabilities": capability_names(state.capabilities),
        "health": health,
        "effective_config": effective,
        "remote_config": _remote_config(state),
        "identifying_attributes": indexable(derived.identifying),
        "non_identifying_attributes": indexable(derived.non_identifying),
        "attributes": {k: v for k, v in attrs.items() if _indexable_key(k)},
        "search_text": derived.search_text(uid)[:SEARCH_TEXT_LIMIT],
        "connection": {"node": state.node or None, "transport": state.transport or None},
        "packages": _packages(state),
        "opamp": {
            "enrolled_at": float(state.enrolled_at),
            "last_seen": float(state.last_seen),
            "capabilities_bitmask": state.capabilities,
            "pending_command": state.pending_command,
            "command_id": state.command_id or None,
            "key_id": state.key_id or None,
            "previous_instance_uids": [uid_str(u) for u in state.previous_instance_uids],
            "duplicate_of": None if state.duplicate_of is None else uid_str(state.duplicate_of),
            "offered_at": float(state.offered_at),
            "offered_settings_hash": None
            if state.offered_settings_hash is None
            else state.offered_settings_hash.hex(),
            "offered_packages_hash": None
            if state.offered_packages_hash is None
            else state.offered_packages_hash.hex(),
            "offered_packages_at": float(state.offered_packages_at),
            "raw": {
                "description": _b64(state.description),
                "health": _b64(state.health),
                "effective_config": _b64(state.effective_config),
                "remote_config_status": _b64(state.remote_config_status),
                "available_components": _b64(state.available_components),
                "connection_settings_status": _b64(state.connection_settings_status),
                "package_statuses": _b64(state.package_statuses),
            },
        },
    }


def _packages(state: AgentState) -> dict[str, Any] | None:
    """The reported packages' names and status terms (None: never reported)."""
    if state.package_statuses is None:
        return None
    names = sorted(pb.PackageStatuses.FromString(state.package_statuses).packages)
    return {
        "names": [n for n in names if 0 < len(n) <= MAX_TERM_NAME][:MAX_TERMS],
        "states": package_terms(state.package_statuses),
    }


def document_size(document: Mapping[str, Any]) -> int:
    return len(json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode())


def bounded_agent_document(state: AgentState, limit: int | None = None) -> dict[str, Any]:
    """agent_document(), within `limit` bytes: first without the `effective_config.files` copy (the
    exact bytes stay in `opamp.raw`), then without the largest reported parts, each named in
    `opamp.oversized`. A part the state lacks because an earlier write left it out stays named."""
    limit = MAX_DOCUMENT_BYTES if limit is None else limit
    carried = tuple(p for p in state.oversized if getattr(state, p) is None)
    reported = sum(len(getattr(state, p) or b"") for p in REPORTED_PARTS)
    document = agent_document(state)
    # Below a sixteenth of the bound in reported protobuf no document can reach it (the JSON copies
    # cost a few times the bytes), so it is not serialized just to be measured.
    if reported <= limit // 16 or document_size(document) <= limit:
        if carried:
            document["opamp"]["oversized"] = list(carried)
        return document
    dropped = list(carried)
    while True:
        if document["effective_config"] is not None:
            document["effective_config"].pop("files", None)
        if dropped:
            document["opamp"]["oversized"] = dropped
        if document_size(document) <= limit:
            return document
        present = [p for p in REPORTED_PARTS if getattr(state, p) is not None]
        if not present:
            return document  # only bounded fields are left
        largest = max(present, key=lambda p: len(getattr(state, p)))
        dropped.append(largest)
        state = _without(state, largest)
        document = agent_document(state)


def _without(state: AgentState, part: str) -> AgentState:
    if part == "effective_config":
        return dataclasses.replace(state, effective_config=None)
    if part == "health":
        return dataclasses.replace(state, health=None)
    if part == "remote_config_status":
        return dataclasses.replace(state, remote_config_status=None)
    if part == "available_components":
        return dataclasses.replace(state, available_components=None)
    if part == "package_statuses":
        return dataclasses.replace(state, package_statuses=None)
    return dataclasses.replace(state, description=None)


def heartbeat_fields(state: AgentState) -> dict[str, Any]:
    """The partial document a touch writes: the heartbeat fields and nothing else."""
    return {
        "last_checkin": timestamp(state.last_seen),
        "sequence_num": state.sequence_num,
        "connection": {"node": state.node or None, "transport": state.transport or None},
        "packages": _packages(state),
        "opamp": {"last_seen": float(state.last_seen)},
    }


def moved_document(old: bytes, new: bytes) -> dict[str, Any]:
    return {
        "type": AGENT_TYPE,
        "active": False,
        "agent": {"id": uid_str(old)},
        "opamp": {"moved_to": uid_str(new)},
    }


def _uid(text: object) -> bytes:
    if not isinstance(text, str):
        raise UnreadableDocument(f"expected a uid string, got {type(text).__name__}")
    try:
        return uuid.UUID(text).bytes
    except ValueError:
        raise UnreadableDocument(f"not a uid: {text!r}") from None


def _hex(value: object) -> bytes | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise UnreadableDocument(f"expected hex text, got {type(value).__name__}")
    return bytes.fromhex(value)


def _transport(value: object) -> Transport | Literal[""]:
    if value == "http" or value == "websocket":
        return value
    if value in (None, ""):
        return ""
    raise UnreadableDocument(f"unknown transport {value!r}")


def agent_from_source(source: Mapping[str, Any]) -> AgentState | Moved:
    """The record (or the move) a document holds; UnreadableDocument if it is not one of ours."""
    try:
        opamp = source["opamp"]
        if source.get("active") is False:
            return Moved(_uid(opamp["moved_to"]))
        raw = opamp["raw"]
        remote = source.get("remote_config") or {}
        connection = source.get("connection") or {}
        return AgentState(
            instance_uid=_uid(source["agent"]["id"]),
            enrolled_at=float(opamp["enrolled_at"]),
            last_seen=float(opamp["last_seen"]),
            sequence_num=int(source["sequence_num"]),
            capabilities=int(opamp["capabilities_bitmask"]),
            description=_unb64(raw.get("description")),
            health=_unb64(raw.get("health")),
            effective_config=_unb64(raw.get("effective_config")),
            remote_config_status=_unb64(raw.get("remote_config_status")),
            available_components=_unb64(raw.get("available_components")),
            connection_settings_status=_unb64(raw.get("connection_settings_status")),
            package_statuses=_unb64(raw.get("package_statuses")),
            offered_packages_hash=_hex(opamp.get("offered_packages_hash")),
            offered_packages_at=float(opamp.get("offered_packages_at") or 0.0),
            disconnected=source["last_checkin_status"] == "disconnected",
            previous_instance_uids=tuple(_uid(u) for u in opamp.get("previous_instance_uids") or ()),
            pending_command=opamp.get("pending_command"),
            command_id=opamp.get("command_id") or "",
            duplicate_of=_uid(opamp["duplicate_of"]) if opamp.get("duplicate_of") else None,
            key_id=opamp.get("key_id") or "",
            node=connection.get("node") or "",
            transport=_transport(connection.get("transport")),
            offered_config_hash=_hex(remote.get("offered_hash")),
            offered_at=float(opamp.get("offered_at") or 0.0),
            offered_settings_hash=_hex(opamp.get("offered_settings_hash")),
            failed_config_hash=_hex(remote.get("failed_hash")),
            oversized=tuple(str(p) for p in opamp.get("oversized") or ()),
        )
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, UnreadableDocument):
            raise
        raise UnreadableDocument(f"not an agent document of this gateway: {exc!r}") from None


def config_document(config: Config) -> dict[str, Any]:
    return {
        "name": config.name,
        "version": config.version,
        "hash": config.hash,
        "priority": config.priority,
        "created_at": timestamp(config.created_at),
        "updated_at": timestamp(config.updated_at),
        "selector": config.selector.to_json(),
        "spec": spec_json(config.spec),
        "opamp": {"created_at": float(config.created_at), "updated_at": float(config.updated_at)},
    }


def history_entry(entry: ConfigVersion) -> dict[str, Any]:
    """One item of a config document's `history`."""
    return {
        "version": entry.version,
        "hash": entry.hash,
        "created_at": entry.created_at,
        "spec": spec_json(entry.spec),
    }


def history_from_source(source: Mapping[str, Any]) -> list[ConfigVersion]:
    """A config document's `history` (absent when an older gateway wrote the document)."""
    try:
        return [
            ConfigVersion(
                version=int(item["version"]),
                hash=item["hash"],
                created_at=float(item["created_at"]),
                spec=spec_from_json(item["spec"]),
            )
            for item in source.get("history", ())
        ]
    except (KeyError, TypeError, ValueError) as exc:
        raise UnreadableDocument(f"not a config history of this gateway: {exc!r}") from None


def config_from_source(source: Mapping[str, Any]) -> Config:
    try:
        return Config(
            name=source["name"],
            spec=spec_from_json(source["spec"]),
            version=int(source["version"]),
            created_at=float(source["opamp"]["created_at"]),
            updated_at=float(source["opamp"]["updated_at"]),
            hash=source["hash"],
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise UnreadableDocument(f"not a config document of this gateway: {exc!r}") from None
