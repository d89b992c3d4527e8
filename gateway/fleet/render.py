"""The agent record as the admin API shows it (JSON-compatible dicts)."""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gateway.fleet.agent import AgentState, facts, uid_str
from gateway.fleet.attributes import key_values
from gateway.fleet.credentials import AgentCredential, kind_of
from gateway.fleet.package_status import package_statuses_json
from gateway.fleet.rollout import ConfigSync
from gateway.fleet.status import derive_status
from gateway.opamp.capabilities import capability_names
from gateway.proto import opamp_pb2 as pb

_COMMANDS: dict[int, str] = {pb.CommandType_Restart: "restart"}
_CONFIG_STATUS = {
    pb.RemoteConfigStatuses_UNSET: "UNSET",
    pb.RemoteConfigStatuses_APPLIED: "APPLIED",
    pb.RemoteConfigStatuses_APPLYING: "APPLYING",
    pb.RemoteConfigStatuses_FAILED: "FAILED",
}


def timestamp(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _nanos(value: int) -> str | None:
    return timestamp(value / 1e9) if value else None


def health_json(health: pb.ComponentHealth) -> dict[str, Any]:
    return {
        "healthy": health.healthy,
        "start_time": _nanos(health.start_time_unix_nano),
        "last_error": health.last_error,
        "status": health.status,
        "status_time": _nanos(health.status_time_unix_nano),
        "attributes": key_values(health.attributes),
        "components": {
            name: health_json(child) for name, child in sorted(health.component_health_map.items())
        },
    }


def _body(body: bytes) -> dict[str, str]:
    try:
        return {"body": body.decode("utf-8"), "encoding": "utf-8"}
    except UnicodeDecodeError:
        return {"body": base64.b64encode(body).decode("ascii"), "encoding": "base64"}


def config_map_json(config_map: pb.AgentConfigMap) -> dict[str, Any]:
    return {
        name: {"content_type": f.content_type, **_body(f.body)}
        for name, f in sorted(config_map.config_map.items())
    }


def effective_config_json(data: bytes) -> dict[str, Any]:
    config = pb.EffectiveConfig.FromString(data)
    return {"hash": hashlib.sha256(data).hexdigest(), "files": config_map_json(config.config_map)}


def _component_json(details: pb.ComponentDetails) -> dict[str, Any]:
    return {
        "metadata": key_values(details.metadata),
        "components": {name: _component_json(sub) for name, sub in sorted(details.sub_component_map.items())},
    }


def available_components_json(data: bytes) -> dict[str, Any]:
    """The stored AvailableComponents: its hash (hex) and the component tree with each one's metadata."""
    components = pb.AvailableComponents.FromString(data)
    return {
        "hash": components.hash.hex(),
        "components": {name: _component_json(d) for name, d in sorted(components.components.items())},
    }


def remote_config_json(data: bytes) -> dict[str, Any]:
    status = pb.RemoteConfigStatus.FromString(data)
    return {
        "status": _CONFIG_STATUS.get(status.status, str(status.status)),
        "last_remote_config_hash": status.last_remote_config_hash.hex(),
        "error_message": status.error_message,
    }


_SETTINGS_STATUS = {
    pb.ConnectionSettingsStatuses_UNSET: "UNSET",
    pb.ConnectionSettingsStatuses_APPLIED: "APPLIED",
    pb.ConnectionSettingsStatuses_APPLYING: "APPLYING",
    pb.ConnectionSettingsStatuses_FAILED: "FAILED",
}


def connection_settings_json(data: bytes, offered: bytes | None) -> dict[str, Any]:
    """The agent's last ConnectionSettingsStatus, with the hash of the offer it last got."""
    status = pb.ConnectionSettingsStatus.FromString(data)
    return {
        "status": _SETTINGS_STATUS.get(status.status, str(status.status)),
        "last_connection_settings_hash": status.last_connection_settings_hash.hex(),
        "error_message": status.error_message,
        "offered_hash": None if offered is None else offered.hex(),
    }


@dataclass(frozen=True, slots=True)
class ConnectionInfo:
    """Where an agent is connected: for WebSocket agents, which node holds the socket; for HTTP
    agents, whether they poll (seen within offline_after) and which node answered last."""

    connected: bool
    transport: str | None
    node: str | None


def credential_json(credential: AgentCredential | None) -> dict[str, Any]:
    """Which kind of credential the agent speaks with (per-agent credentials, docs/security.md): on
    the shared agent keys, on its own credential, or revoked; whether a new credential was offered
    and not used yet, and whether an operator asked for one. Never a secret or a digest."""
    return {
        "credential": kind_of(credential),
        "credential_pending": credential is not None and credential.pending is not None,
        "credential_rotation_requested": credential is not None and credential.rotate,
    }


def agent_json(
    state: AgentState,
    now: float,
    offline_after: float,
    connection: ConnectionInfo | None = None,
    sync: ConfigSync | None = None,
    package_sync: dict[str, Any] | None = None,
    credential: AgentCredential | None = None,
    settings_sources: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`credential`: the agent's credential record (None: it has none, it is on shared keys).
    `settings_sources`: which connection settings give each part of its offer (None: none stored)."""
    derived = facts(state)
    body: dict[str, Any] = {
        "instance_uid": uid_str(state.instance_uid),
        "status": derive_status(state, derived.healthy, now, offline_after),
        "enrolled_at": timestamp(state.enrolled_at),
        "last_seen": timestamp(state.last_seen),
        "sequence_num": state.sequence_num,
        "capabilities": capability_names(state.capabilities),
        "capabilities_bitmask": state.capabilities,
        "description": {
            "identifying_attributes": derived.identifying,
            "non_identifying_attributes": derived.non_identifying,
        },
        "health": None if state.health is None else health_json(pb.ComponentHealth.FromString(state.health)),
        "effective_config": None
        if state.effective_config is None
        else effective_config_json(state.effective_config),
        "remote_config": None
        if state.remote_config_status is None
        else remote_config_json(state.remote_config_status),
        "connection_settings": None
        if state.connection_settings_status is None
        else connection_settings_json(state.connection_settings_status, state.offered_settings_hash),
        "packages": None
        if state.package_statuses is None
        else package_statuses_json(state.package_statuses, state.offered_packages_hash),
        "previous_instance_uids": [uid_str(uid) for uid in state.previous_instance_uids],
        "duplicate_of": None if state.duplicate_of is None else uid_str(state.duplicate_of),
        "available_components": None
        if state.available_components is None
        else available_components_json(state.available_components),
        # The agent key (group) it is bound to, never the key; null: bound to none (docs/security.md).
        "key_id": state.key_id or None,
        **credential_json(credential),
    }
    if connection is not None:
        body["connected"] = connection.connected
        body["transport"] = connection.transport
        body["node"] = connection.node
    if sync is not None:
        body["config_sync"] = sync.to_json()
    if package_sync is not None:
        body["package_sync"] = package_sync
    if settings_sources is not None:
        body["connection_settings_sources"] = settings_sources
    if state.pending_command is not None:
        body["pending_command"] = _COMMANDS.get(state.pending_command, str(state.pending_command))
        body["command_id"] = state.command_id or None
    if state.oversized:
        body["oversized"] = list(state.oversized)
    return body
