"""Parsing connection settings: every bad field is named, and the JSON round-trips."""

from __future__ import annotations

import pytest

from gateway.fleet.connection_settings import (
    ConnectionSettings,
    InvalidConnectionSettings,
    parse_spec,
    settings_json,
    spec_from_json,
    spec_json,
)

GOOD = {
    "selector": {"match": {"service.name": "otelcol"}},
    "priority": 3,
    "own_metrics": {
        "destination_endpoint": "https://otlp.example.com/v1/metrics",
        "headers": {"Authorization": "Bearer x"},
        "tls": {
            "ca_pem_contents": "-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----\n",
            "min_version": "1.3",
        },
    },
    "own_logs": {"destination_endpoint": "http://logs.local:4318/v1/logs"},
    "other_connections": {
        "backup": {"destination_endpoint": "https://b.example.com", "other_settings": {"k": "v"}}
    },
}


def test_round_trip() -> None:
    spec = parse_spec("telemetry", GOOD)
    assert spec_from_json(spec_json(spec)) == spec
    assert spec.digest() == parse_spec("telemetry", spec_json(spec)).digest()
    assert spec.own_traces is None
    shown = settings_json(ConnectionSettings("telemetry", spec, 2, 1.0, 2.0, spec.digest()))
    assert shown["version"] == 2 and shown["own_metrics"]["tls"]["min_version"] == "1.3"
    # GET -> PUT: the read-only fields are accepted back.
    assert parse_spec("telemetry", shown) == spec


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([], "body"),
        ({"own_metrics": GOOD["own_metrics"]}, "selector"),
        ({"selector": {}}, "body"),
        ({"selector": {}, "color": 1, "own_logs": GOOD["own_logs"]}, "color"),
        ({"selector": {"match": 3}, "own_logs": GOOD["own_logs"]}, "selector.match"),
        ({"selector": {}, "priority": "x", "own_logs": GOOD["own_logs"]}, "priority"),
        ({"selector": {}, "priority": True, "own_logs": GOOD["own_logs"]}, "priority"),
        ({"selector": {}, "own_metrics": "x"}, "own_metrics"),
        ({"selector": {}, "own_metrics": {}}, "own_metrics.destination_endpoint"),
        (
            {"selector": {}, "own_metrics": {"destination_endpoint": "ftp://x"}},
            "own_metrics.destination_endpoint",
        ),
        (
            {"selector": {}, "own_traces": {"destination_endpoint": "https://x", "other_settings": {}}},
            "own_traces.other_settings",
        ),
        (
            {"selector": {}, "own_logs": {"destination_endpoint": "https://x", "headers": []}},
            "own_logs.headers",
        ),
        (
            {"selector": {}, "own_logs": {"destination_endpoint": "https://x", "headers": {"a": 1}}},
            "own_logs.headers.a",
        ),
        (
            {"selector": {}, "own_logs": {"destination_endpoint": "https://x", "headers": {"a": "b\nc"}}},
            "own_logs.headers.a",
        ),
        (
            {"selector": {}, "own_logs": {"destination_endpoint": "https://x", "headers": {" a": "b"}}},
            "own_logs.headers.' a'",
        ),
        ({"selector": {}, "own_logs": {"destination_endpoint": "https://x", "tls": 1}}, "own_logs.tls"),
        (
            {"selector": {}, "own_logs": {"destination_endpoint": "https://x", "tls": {"x": 1}}},
            "own_logs.tls.x",
        ),
        (
            {
                "selector": {},
                "own_logs": {"destination_endpoint": "https://x", "tls": {"insecure_skip_verify": 1}},
            },
            "own_logs.tls.insecure_skip_verify",
        ),
        (
            {
                "selector": {},
                "own_logs": {"destination_endpoint": "https://x", "tls": {"ca_pem_contents": "nope"}},
            },
            "own_logs.tls.ca_pem_contents",
        ),
        (
            {
                "selector": {},
                "own_logs": {"destination_endpoint": "https://x", "tls": {"min_version": "x" * 17}},
            },
            "own_logs.tls.min_version",
        ),
        ({"selector": {}, "other_connections": []}, "other_connections"),
        ({"selector": {}, "other_connections": {}}, "other_connections"),
        ({"selector": {}, "other_connections": {"": {}}}, "other_connections.''"),
        (
            {
                "selector": {},
                "other_connections": {"b": {"destination_endpoint": "https://x", "other_settings": {"k": 2}}},
            },
            "other_connections.b.other_settings.k",
        ),
        (
            {
                "selector": {},
                "other_connections": {f"c{i}": {"destination_endpoint": "https://x"} for i in range(65)},
            },
            "other_connections",
        ),
        (
            {
                "selector": {},
                "own_logs": {
                    "destination_endpoint": "https://x",
                    "headers": {f"h{i}": "v" for i in range(65)},
                },
            },
            "own_logs.headers",
        ),
    ],
)
def test_bad_fields_are_named(body: object, field: str) -> None:
    with pytest.raises(InvalidConnectionSettings) as info:
        parse_spec("telemetry", body)
    assert info.value.field == field


def test_bad_name() -> None:
    with pytest.raises(InvalidConnectionSettings) as info:
        parse_spec("Bad Name", GOOD)
    assert info.value.field == "name"


def test_integral_float_priority() -> None:
    assert parse_spec("x", {**GOOD, "priority": 4.0}).priority == 4
