"""The connection settings offer rule: each part only to agents with its capability, one stable hash
combined with the heartbeat `opamp` part, offered once, offered again when a part changes."""

from __future__ import annotations

from dataclasses import replace

import pytest

from gateway.fleet.agent import AgentState
from gateway.fleet.connection_settings import ConnectionSettings, parse_spec
from gateway.opamp import capabilities as caps, heartbeat
from gateway.opamp.connection_offers import SettingsSet
from gateway.opamp.engine import FleetView, Outcome, handle
from gateway.proto import opamp_pb2 as pb
from tests.opamp.test_engine import NOW, full_report, heartbeat as heartbeat_msg

BASE = caps.REPORTS_STATUS | caps.ACCEPTS_REMOTE_CONFIG
METRICS = pb.AgentCapabilities_ReportsOwnMetrics
TRACES = pb.AgentCapabilities_ReportsOwnTraces
LOGS = pb.AgentCapabilities_ReportsOwnLogs
OTHER = pb.AgentCapabilities_AcceptsOtherConnectionSettings
ALL = BASE | METRICS | TRACES | LOGS | OTHER
SELECTOR = {"match": {"service.name": "otelcol-contrib"}}


def _connection(endpoint: str) -> dict[str, object]:
    return {"destination_endpoint": endpoint, "headers": {"Authorization": "Bearer t"}}


def _settings(name: str = "telemetry", priority: int = 0, **parts: object) -> ConnectionSettings:
    body = {"selector": SELECTOR, "priority": priority, **parts}
    spec = parse_spec(name, body)
    return ConnectionSettings(name, spec, 1, NOW, NOW, spec.digest())


EVERYTHING = _settings(
    own_metrics=_connection("https://otlp.example.com/v1/metrics"),
    own_traces=_connection("https://otlp.example.com/v1/traces"),
    own_logs=_connection("https://otlp.example.com/v1/logs"),
    other_connections={"backup": {**_connection("https://backup.example.com"), "other_settings": {"a": "b"}}},
)


def _fleet(*settings: ConnectionSettings, interval: int = 0) -> FleetView:
    hb = heartbeat.settings_offer(interval)
    return FleetView(settings=SettingsSet(tuple(settings), heartbeat_offer=hb))


def _no_mint() -> bytes:
    raise AssertionError("no uid should be minted")


def _run(state: AgentState | None, msg: pb.AgentToServer, fleet: FleetView) -> Outcome:
    return handle(state, msg, fleet, NOW, _no_mint)


def _enrolled(fleet: FleetView, capabilities: int) -> Outcome:
    return _run(None, full_report(0, capabilities=capabilities), fleet)


@pytest.mark.parametrize(
    ("capability", "field"),
    [(METRICS, "own_metrics"), (TRACES, "own_traces"), (LOGS, "own_logs"), (OTHER, "other_connections")],
)
def test_each_part_only_with_its_capability(capability: int, field: str) -> None:
    outcome = _enrolled(_fleet(EVERYTHING), BASE | capability)
    offer = outcome.reply.connection_settings
    assert outcome.reply.HasField("connection_settings")
    present = {f.name for f, _ in offer.ListFields()} - {"hash"}
    assert present == {field}
    assert len(offer.hash) == 32
    assert outcome.state is not None and outcome.state.offered_settings_hash == offer.hash


def test_own_metrics_content() -> None:
    offer = _enrolled(_fleet(EVERYTHING), ALL).reply.connection_settings
    assert offer.own_metrics.destination_endpoint == "https://otlp.example.com/v1/metrics"
    assert [(h.key, h.value) for h in offer.own_metrics.headers.headers] == [("Authorization", "Bearer t")]
    assert offer.other_connections["backup"].other_settings == {"a": "b"}
    assert not offer.HasField("opamp")


def test_nothing_without_any_capability() -> None:
    outcome = _enrolled(_fleet(EVERYTHING), BASE)
    assert not outcome.reply.HasField("connection_settings")


def test_nothing_when_the_selector_does_not_match() -> None:
    other = _settings(own_metrics=_connection("https://x.example.com"))
    other = replace(
        other,
        spec=replace(
            other.spec,
            selector=parse_spec(
                "x", {"selector": {}, "own_logs": _connection("https://y.example.com")}
            ).selector,
        ),
    )
    outcome = _enrolled(_fleet(other), ALL)
    assert not outcome.reply.HasField("connection_settings")


def test_hash_is_stable_across_sets_and_nodes() -> None:
    first = _enrolled(_fleet(EVERYTHING), ALL).reply.connection_settings
    again = _enrolled(_fleet(EVERYTHING), ALL).reply.connection_settings
    assert first == again


def test_not_offered_again_on_later_messages() -> None:
    fleet = _fleet(EVERYTHING)
    state = _enrolled(fleet, ALL).state
    assert state is not None
    for seq in (1, 2, 3):
        outcome = _run(state, heartbeat_msg(seq, capabilities=ALL), fleet)
        assert not outcome.reply.HasField("connection_settings")
        assert outcome.event == "heartbeat"
        assert outcome.state is not None
        state = outcome.state


def test_offered_again_when_a_part_changes() -> None:
    state = _enrolled(_fleet(EVERYTHING), ALL).state
    assert state is not None
    changed = _settings(own_metrics=_connection("https://new.example.com/v1/metrics"))
    outcome = _run(state, heartbeat_msg(1, capabilities=ALL), _fleet(changed))
    assert (
        outcome.reply.connection_settings.own_metrics.destination_endpoint
        == "https://new.example.com/v1/metrics"
    )
    assert outcome.reply.connection_settings.hash != state.offered_settings_hash


def test_a_change_to_a_part_the_agent_cannot_take_is_not_offered() -> None:
    state = _enrolled(_fleet(EVERYTHING), BASE | METRICS).state
    assert state is not None
    changed = replace(EVERYTHING, spec=replace(EVERYTHING.spec, own_logs=None))
    outcome = _run(state, heartbeat_msg(1, capabilities=BASE | METRICS), _fleet(changed))
    assert not outcome.reply.HasField("connection_settings")


def test_combined_with_the_heartbeat_offer() -> None:
    wants = ALL | heartbeat.NEEDED
    outcome = _enrolled(_fleet(EVERYTHING, interval=30), wants)
    offer = outcome.reply.connection_settings
    assert offer.opamp.heartbeat_interval_seconds == 30
    assert offer.own_metrics.destination_endpoint.endswith("/v1/metrics")
    alone = heartbeat.settings_offer(30)
    assert alone is not None and offer.hash != alone.hash
    # A new interval is a new combined offer.
    assert outcome.state is not None
    later = _run(outcome.state, heartbeat_msg(1, capabilities=wants), _fleet(EVERYTHING, interval=45))
    assert later.reply.connection_settings.opamp.heartbeat_interval_seconds == 45
    assert later.reply.connection_settings.own_metrics.destination_endpoint.endswith("/v1/metrics")


def test_heartbeat_only_agent_keeps_the_heartbeat_offer() -> None:
    outcome = _enrolled(_fleet(EVERYTHING, interval=30), BASE | heartbeat.NEEDED)
    assert outcome.reply.connection_settings == heartbeat.settings_offer(30)


def test_priority_then_name_picks_each_part() -> None:
    low = _settings(
        "a-low",
        0,
        own_metrics=_connection("https://low.example.com"),
        own_logs=_connection("https://logs.example.com"),
    )
    high = _settings("z-high", 5, own_metrics=_connection("https://high.example.com"))
    offer = _enrolled(_fleet(low, high), ALL).reply.connection_settings
    assert offer.own_metrics.destination_endpoint == "https://high.example.com"
    assert offer.own_logs.destination_endpoint == "https://logs.example.com"
    tie = _settings("b", 0, own_metrics=_connection("https://b.example.com"))
    offer = _enrolled(_fleet(tie, low), ALL).reply.connection_settings
    assert offer.own_metrics.destination_endpoint == "https://low.example.com"


def test_reported_other_hash_gets_the_offer_again() -> None:
    wants = ALL | caps.REPORTS_CONNECTION_SETTINGS_STATUS
    fleet = _fleet(EVERYTHING)
    state = _enrolled(fleet, wants).state
    assert state is not None
    msg = heartbeat_msg(1, capabilities=wants)
    msg.connection_settings_status.last_connection_settings_hash = b"\x01" * 32
    msg.connection_settings_status.status = pb.ConnectionSettingsStatuses_APPLIED
    outcome = _run(state, msg, fleet)
    assert outcome.reply.connection_settings.hash == state.offered_settings_hash


def test_tls_is_offered() -> None:
    pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
    tls = _settings(
        own_traces={
            "destination_endpoint": "https://t.example.com",
            "tls": {"ca_pem_contents": pem, "insecure_skip_verify": True},
        }
    )
    offer = _enrolled(_fleet(tls), ALL).reply.connection_settings
    assert offer.own_traces.tls.ca_pem_contents == pem
    assert offer.own_traces.tls.insecure_skip_verify


def test_offer_cache_is_per_description_and_capabilities() -> None:
    settings = SettingsSet((EVERYTHING,))
    state = _enrolled(_fleet(EVERYTHING), ALL).state
    assert state is not None
    first = settings.offer_for(state)
    assert settings.offer_for(state) is first
    assert settings.offer_for(replace(state, capabilities=BASE | METRICS)) != first
    assert settings.offer_for(replace(state, description=None)) is None


def test_server_offers_any() -> None:
    assert not SettingsSet().offers_any
    assert SettingsSet((EVERYTHING,)).offers_any
    assert SettingsSet(heartbeat_offer=heartbeat.settings_offer(10)).offers_any
    assert SettingsSet((EVERYTHING,)).generation == SettingsSet((EVERYTHING,)).generation


def test_sources_name_the_settings_behind_each_part_the_agent_takes() -> None:
    low = _settings(
        "a-low",
        0,
        own_metrics=_connection("https://low.example.com"),
        own_logs=_connection("https://logs.example.com"),
        other_connections={"backup": _connection("https://backup.example.com")},
    )
    high = _settings("z-high", 5, own_metrics=_connection("https://high.example.com"))
    settings = SettingsSet((low, high))
    state = _enrolled(_fleet(), ALL).state
    assert state is not None
    assert settings.sources_for(state) == {
        "own_logs": "a-low",
        "own_metrics": "z-high",
        "other_connections": {"backup": "a-low"},
    }
    # Only the parts its capabilities take: what it is offered, nothing it is not.
    metrics_only = replace(state, capabilities=BASE | METRICS)
    assert settings.sources_for(metrics_only) == {"own_metrics": "z-high", "other_connections": {}}
    # No description, no attributes: the selectors match nothing.
    assert settings.sources_for(replace(state, description=None)) == {"other_connections": {}}
    assert SettingsSet().sources_for(state) is None
