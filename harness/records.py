"""Agent records as the engine would store them (a collector reporting description and health),
built directly: for store tests, and for benchmarks that fill a store without running agents."""

from __future__ import annotations

import uuid
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from gateway.fleet.agent import AgentState, AgentWrite
from gateway.proto import anyvalue_pb2 as av, opamp_pb2 as pb

FULL = frozenset({"enrolled", "last_seen", "sequence_num", "description", "health", "capabilities"})


def new_uid() -> bytes:
    return uuid.uuid4().bytes


def any_value(value: Any) -> av.AnyValue:
    if isinstance(value, bool):
        return av.AnyValue(bool_value=value)
    if isinstance(value, int):
        return av.AnyValue(int_value=value)
    if isinstance(value, float):
        return av.AnyValue(double_value=value)
    if isinstance(value, bytes):
        return av.AnyValue(bytes_value=value)
    if isinstance(value, list):
        return av.AnyValue(array_value=av.ArrayValue(values=[any_value(v) for v in value]))
    if isinstance(value, dict):
        return av.AnyValue(kvlist_value=av.KeyValueList(values=key_values(value)))
    return av.AnyValue(string_value=str(value))


def key_values(attributes: Mapping[str, Any]) -> list[av.KeyValue]:
    return [av.KeyValue(key=k, value=any_value(v)) for k, v in attributes.items()]


def description(identifying: Mapping[str, Any], non_identifying: Mapping[str, Any] | None = None) -> bytes:
    msg = pb.AgentDescription(
        identifying_attributes=key_values(identifying),
        non_identifying_attributes=key_values(non_identifying or {}),
    )
    return msg.SerializeToString(deterministic=True)


def health(healthy: bool, *, last_error: str = "") -> bytes:
    msg = pb.ComponentHealth(
        healthy=healthy,
        start_time_unix_nano=1_700_000_000_000_000_000,
        status="StatusOK" if healthy else "StatusRecoverableError",
        last_error=last_error,
        component_health_map={
            "pipeline:traces": pb.ComponentHealth(healthy=healthy, status="StatusOK"),
            "receiver:otlp": pb.ComponentHealth(healthy=True, status="StatusOK"),
        },
    )
    return msg.SerializeToString(deterministic=True)


def effective_config(body: str = "receivers:\n  otlp:\n") -> bytes:
    msg = pb.EffectiveConfig(
        config_map=pb.AgentConfigMap(
            config_map={"": pb.AgentConfigFile(body=body.encode(), content_type="text/yaml")}
        )
    )
    return msg.SerializeToString(deterministic=True)


def agent(
    uid: bytes | None = None,
    *,
    last_seen: float = 1000.0,
    service_name: str = "otelcol-contrib",
    service_version: str = "0.120.0",
    os_type: str = "linux",
    host_name: str = "host-1",
    healthy: bool | None = True,
    identifying: Mapping[str, Any] | None = None,
    non_identifying: Mapping[str, Any] | None = None,
    **fields: Any,
) -> AgentState:
    """A record as a collector reporting description and health would have it."""
    ident: dict[str, Any] = {"service.name": service_name, "service.version": service_version}
    if not service_name:
        del ident["service.name"]
    if not service_version:
        del ident["service.version"]
    ident.update(identifying or {})
    non_ident: dict[str, Any] = {"host.name": host_name, "os.type": os_type}
    if not os_type:
        del non_ident["os.type"]
    non_ident.update(non_identifying or {})
    state = AgentState(
        instance_uid=uid if uid is not None else new_uid(),
        enrolled_at=last_seen - 10.0,
        last_seen=last_seen,
        sequence_num=1,
        capabilities=0x1 | 0x2 | 0x800,
        description=description(ident, non_ident),
        health=None if healthy is None else health(healthy),
    )
    return replace(state, **fields) if fields else state


def full(state: AgentState, previous_uid: bytes | None = None) -> AgentWrite:
    return AgentWrite(state=state, changed=FULL, previous_uid=previous_uid)
