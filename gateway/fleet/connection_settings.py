"""Connection settings: where agents send their own telemetry, and their other connections.

A named connection setting as the admin API takes it (`PUT /api/v1/connection-settings/{name}`):

    {"selector": {"match": {"service.name": "otelcol-contrib"}},
     "priority": 10,
     "own_metrics": {"destination_endpoint": "https://otlp.example.com/v1/metrics",
                     "headers": {"Authorization": "Bearer ..."},
                     "tls": {"ca_pem_contents": "-----BEGIN CERTIFICATE-----...",
                             "insecure_skip_verify": false}},
     "own_traces": {...}, "own_logs": {...},
     "other_connections": {"backup": {"destination_endpoint": "https://...",
                                      "other_settings": {"compression": "zstd"}}}}

Each part (`own_metrics`, `own_traces`, `own_logs`, every named entry of `other_connections`) is
resolved like a config file (gateway/fleet/desired.py): of the settings whose selector matches an
agent, in order of priority (highest first) then name, the first that carries the part gives it.
The store keeps the parsed spec plus `version` (1 on create, +1 on every change) and `hash`, the
SHA-256 of the spec's canonical JSON: a PUT of identical content changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from gateway.fleet import selector as selector_mod
from gateway.fleet.configs import MAX_PRIORITY, InvalidConfig, check_name, shown_key
from gateway.fleet.selector import Selector

TELEMETRY_KINDS = ("own_metrics", "own_traces", "own_logs")
MAX_HEADERS = 64
MAX_OTHER_CONNECTIONS = 64
MAX_TEXT = 8 * 1024
# A CA bundle in PEM: a few certificates.
MAX_PEM = 64 * 1024
MAX_ENDPOINT = 2048
MAX_NAME = 256
MAX_TLS_VERSION = 16
# The rules as JSON Schema patterns too (the OpenAPI document uses them; character classes only, so
# Python and ECMA-262 agree): an http(s) URL without spaces or control characters; an HTTP header
# name (RFC 9110 token); a header value without line breaks; a name of an other connection or
# setting without control characters; PEM certificates, or nothing.
ENDPOINT_PATTERN = r"^https?://[^\x00-\x20\x7f-\x9f]+$"
HEADER_NAME_PATTERN = r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"
HEADER_VALUE_PATTERN = r"^[^\r\n]*$"
PLAIN_NAME_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]+$"
PEM_PATTERN = r"(^$)|(-----BEGIN CERTIFICATE-----)"
_ENDPOINT = re.compile(ENDPOINT_PATTERN)
_HEADER_NAME = re.compile(HEADER_NAME_PATTERN)
_PLAIN_NAME = re.compile(PLAIN_NAME_PATTERN)
_TLS_FIELDS = frozenset(
    {"ca_pem_contents", "include_system_ca_certs_pool", "insecure_skip_verify", "min_version", "max_version"}
)
_TELEMETRY_FIELDS = frozenset({"destination_endpoint", "headers", "tls"})
_OTHER_FIELDS = _TELEMETRY_FIELDS | {"other_settings"}
# Computed by the server: accepted back in a PUT (GET -> edit -> PUT works) and ignored.
_READ_ONLY = frozenset({"name", "hash", "version", "created_at", "updated_at"})


class InvalidConnectionSettings(InvalidConfig):
    """A connection-settings body the admin API refuses; `field` is the JSON path of the bad part."""


@dataclass(frozen=True, slots=True)
class TLSSpec:
    ca_pem_contents: str = ""
    include_system_ca_certs_pool: bool = False
    insecure_skip_verify: bool = False
    min_version: str = ""
    max_version: str = ""


@dataclass(frozen=True, slots=True)
class Connection:
    """One destination: a TelemetryConnectionSettings, or an OtherConnectionSettings when
    `other_settings` is set (or it is an entry of `other_connections`)."""

    destination_endpoint: str
    # Sorted by key.
    headers: tuple[tuple[str, str], ...] = ()
    tls: TLSSpec | None = None
    # Sorted by key; only in other_connections.
    other_settings: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class SettingsSpec:
    """What the operator decides: the part of a connection setting that a PUT replaces."""

    selector: Selector
    priority: int
    own_metrics: Connection | None = None
    own_traces: Connection | None = None
    own_logs: Connection | None = None
    # Sorted by name.
    other_connections: tuple[tuple[str, Connection], ...] = ()

    def telemetry(self, kind: str) -> Connection | None:
        connection: Connection | None = getattr(self, kind)
        return connection

    def digest(self) -> str:
        canonical = json.dumps(spec_json(self), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class ConnectionSettings:
    name: str
    spec: SettingsSpec
    version: int
    created_at: float
    updated_at: float
    hash: str


def _integer(value: object) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def _text(value: object, field: str, limit: int = MAX_TEXT) -> str:
    if not isinstance(value, str):
        raise InvalidConnectionSettings(field, f"must be a string, got {type(value).__name__}")
    if len(value) > limit:
        raise InvalidConnectionSettings(field, f"at most {limit} characters")
    return value


def _pairs(raw: object, field: str, *, header: bool) -> tuple[tuple[str, str], ...]:
    if not isinstance(raw, dict):
        raise InvalidConnectionSettings(field, "must be an object of name -> string value")
    if len(raw) > MAX_HEADERS:
        raise InvalidConnectionSettings(field, f"at most {MAX_HEADERS} entries")
    out: list[tuple[str, str]] = []
    pattern = _HEADER_NAME if header else _PLAIN_NAME
    for key, value in raw.items():
        if len(key) > MAX_NAME or not pattern.fullmatch(key):
            what = "an HTTP header name" if header else "a name without control characters"
            raise InvalidConnectionSettings(f"{field}.{shown_key(key)}", f"is not {what}")
        text = _text(value, f"{field}.{shown_key(key)}")
        if header and ("\n" in text or "\r" in text):
            raise InvalidConnectionSettings(f"{field}.{key}", "must not contain line breaks")
        out.append((key, text))
    return tuple(sorted(out))


def _tls(raw: object, field: str) -> TLSSpec:
    if not isinstance(raw, dict):
        raise InvalidConnectionSettings(field, "must be an object")
    unknown = set(raw) - _TLS_FIELDS
    if unknown:
        raise InvalidConnectionSettings(f"{field}.{shown_key(sorted(unknown)[0])}", "unknown field")
    flags: dict[str, bool] = {}
    for name in ("include_system_ca_certs_pool", "insecure_skip_verify"):
        value = raw.get(name, False)
        if not isinstance(value, bool):
            raise InvalidConnectionSettings(f"{field}.{name}", "must be true or false")
        flags[name] = value
    pem = _text(raw.get("ca_pem_contents", ""), f"{field}.ca_pem_contents", MAX_PEM)
    if pem and "-----BEGIN CERTIFICATE-----" not in pem:
        raise InvalidConnectionSettings(f"{field}.ca_pem_contents", "must be PEM certificates")
    return TLSSpec(
        ca_pem_contents=pem,
        min_version=_text(raw.get("min_version", ""), f"{field}.min_version", MAX_TLS_VERSION),
        max_version=_text(raw.get("max_version", ""), f"{field}.max_version", MAX_TLS_VERSION),
        **flags,
    )


def _connection(raw: object, field: str, *, other: bool) -> Connection:
    if not isinstance(raw, dict):
        raise InvalidConnectionSettings(field, "must be an object with destination_endpoint")
    unknown = set(raw) - (_OTHER_FIELDS if other else _TELEMETRY_FIELDS)
    if unknown:
        raise InvalidConnectionSettings(f"{field}.{shown_key(sorted(unknown)[0])}", "unknown field")
    endpoint = _text(raw.get("destination_endpoint"), f"{field}.destination_endpoint", MAX_ENDPOINT)
    if not _ENDPOINT.fullmatch(endpoint):
        raise InvalidConnectionSettings(
            f"{field}.destination_endpoint", f"must be an https:// (or http://) URL, got {endpoint[:140]!r}"
        )
    return Connection(
        destination_endpoint=endpoint,
        headers=_pairs(raw.get("headers", {}), f"{field}.headers", header=True),
        tls=_tls(raw["tls"], f"{field}.tls") if "tls" in raw else None,
        other_settings=_pairs(raw.get("other_settings", {}), f"{field}.other_settings", header=False),
    )


def _others(raw: object) -> tuple[tuple[str, Connection], ...]:
    if not isinstance(raw, dict):
        raise InvalidConnectionSettings("other_connections", "must be an object of name -> connection")
    if not raw or len(raw) > MAX_OTHER_CONNECTIONS:
        raise InvalidConnectionSettings("other_connections", f"from 1 to {MAX_OTHER_CONNECTIONS} entries")
    out = []
    for key, value in raw.items():
        if len(key) > MAX_NAME or not _PLAIN_NAME.fullmatch(key):
            raise InvalidConnectionSettings(
                f"other_connections.{shown_key(key)}", "is not a name without control characters"
            )
        out.append((key, _connection(value, f"other_connections.{key}", other=True)))
    return tuple(sorted(out, key=lambda item: item[0]))


def parse_spec(name: str, raw: object) -> SettingsSpec:
    """Validate a PUT body for connection setting `name`; InvalidConnectionSettings names the bad field."""
    try:
        check_name(name)
    except InvalidConfig as exc:
        raise InvalidConnectionSettings("name", str(exc).split(": ", 1)[1]) from None
    if not isinstance(raw, dict):
        raise InvalidConnectionSettings("body", "must be a JSON object with selector and the settings")
    parts = {"selector", "priority", "other_connections", *TELEMETRY_KINDS}
    unknown = set(raw) - parts - _READ_ONLY
    if unknown:
        raise InvalidConnectionSettings(shown_key(sorted(unknown)[0]), "unknown field")
    if "selector" not in raw:
        raise InvalidConnectionSettings("selector", "is required (use {} to match no agent)")
    try:
        selector = selector_mod.parse(raw["selector"])
    except selector_mod.InvalidSelector as exc:
        raise InvalidConnectionSettings(exc.field, str(exc).split(": ", 1)[1]) from None
    priority = _integer(raw.get("priority", 0))
    if priority is None or abs(priority) > MAX_PRIORITY:
        raise InvalidConnectionSettings(
            "priority", f"must be an integer from -{MAX_PRIORITY} to {MAX_PRIORITY}"
        )
    if not parts - {"selector", "priority"} & set(raw):
        raise InvalidConnectionSettings(
            "body", "give at least one of own_metrics, own_traces, own_logs and other_connections"
        )
    telemetry = {k: _connection(raw[k], k, other=False) for k in TELEMETRY_KINDS if k in raw}
    others = _others(raw["other_connections"]) if "other_connections" in raw else ()
    return SettingsSpec(selector=selector, priority=priority, other_connections=others, **telemetry)


def _connection_json(c: Connection) -> dict[str, Any]:
    out: dict[str, Any] = {"destination_endpoint": c.destination_endpoint}
    if c.headers:
        out["headers"] = dict(c.headers)
    if c.tls is not None:
        out["tls"] = {
            "ca_pem_contents": c.tls.ca_pem_contents,
            "include_system_ca_certs_pool": c.tls.include_system_ca_certs_pool,
            "insecure_skip_verify": c.tls.insecure_skip_verify,
            "min_version": c.tls.min_version,
            "max_version": c.tls.max_version,
        }
    if c.other_settings:
        out["other_settings"] = dict(c.other_settings)
    return out


def spec_json(spec: SettingsSpec) -> dict[str, Any]:
    """The spec as a PUT body gives it."""
    out: dict[str, Any] = {"selector": spec.selector.to_json(), "priority": spec.priority}
    for kind in TELEMETRY_KINDS:
        connection = spec.telemetry(kind)
        if connection is not None:
            out[kind] = _connection_json(connection)
    if spec.other_connections:
        out["other_connections"] = {name: _connection_json(c) for name, c in spec.other_connections}
    return out


def spec_from_json(raw: dict[str, Any]) -> SettingsSpec:
    """The inverse of spec_json, for stores that keep the spec as JSON."""
    return parse_spec("stored", raw)


def settings_json(settings: ConnectionSettings) -> dict[str, Any]:
    """A connection setting as the admin API shows it."""
    return {
        "name": settings.name,
        **spec_json(settings.spec),
        "version": settings.version,
        "hash": settings.hash,
        "created_at": settings.created_at,
        "updated_at": settings.updated_at,
    }
