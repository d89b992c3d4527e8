"""Any record the engine can store becomes a document the strict mapping accepts, and comes back
from it bit for bit: attribute keys and values of every shape, NaN, NUL, deep nesting included."""

from __future__ import annotations

import json
from dataclasses import replace

from google.protobuf.message import DecodeError
from hypothesis import HealthCheck, given, settings, strategies as st

from gateway.fleet.agent import AgentState
from gateway.proto import opamp_pb2 as pb
from gateway.store.elasticsearch_documents import (
    Moved,
    agent_document,
    agent_from_source,
    heartbeat_fields,
    moved_document,
)
from gateway.store.elasticsearch_schema import agents_index
from harness.es_double import mapping
from tests.support.messages import UINT64, descriptions, healths

MAPPINGS = agents_index("opamp-agents", "5s").mappings()
# Node clocks: any time a datetime can show (the admin API renders them too).
FINITE = st.floats(allow_nan=False, allow_infinity=False, min_value=-2e10, max_value=2e10)


@st.composite
def records(draw: st.DrawFn) -> AgentState:
    def maybe(strategy: st.SearchStrategy[bytes]) -> bytes | None:
        value: bytes | None = draw(st.one_of(st.none(), strategy))
        return value

    return AgentState(
        instance_uid=draw(st.binary(min_size=16, max_size=16)),
        enrolled_at=draw(FINITE),
        last_seen=draw(FINITE),
        sequence_num=draw(UINT64),
        capabilities=draw(UINT64),
        description=maybe(descriptions().map(lambda d: d.SerializeToString(deterministic=True))),
        health=maybe(healths().map(lambda h: h.SerializeToString(deterministic=True))),
        effective_config=maybe(st.binary(max_size=40)),
        remote_config_status=maybe(st.binary(max_size=40)),
        disconnected=draw(st.booleans()),
        previous_instance_uids=tuple(draw(st.lists(st.binary(min_size=16, max_size=16), max_size=3))),
        pending_command=draw(st.one_of(st.none(), st.integers(0, 5))),
        node=draw(st.text(max_size=10)),
        transport=draw(st.sampled_from(["", "http", "websocket"])),
        offered_config_hash=maybe(st.binary(max_size=32)),
        offered_at=draw(FINITE),
        failed_config_hash=maybe(st.binary(max_size=32)),
        duplicate_of=maybe(st.binary(min_size=16, max_size=16)),
        available_components=maybe(st.binary(max_size=40)),
        offered_settings_hash=maybe(st.binary(max_size=32)),
        key_id=draw(st.sampled_from(["", "edge-eu", "sha256:0123456789ab"])),
    )


def _wire(document: dict[str, object]) -> dict[str, object]:
    """The document as Elasticsearch receives it: strict JSON, or this raises."""
    parsed: dict[str, object] = json.loads(json.dumps(document, allow_nan=False))
    return parsed


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
@given(records())
def test_every_record_is_a_valid_document_and_round_trips(state: AgentState) -> None:
    # Effective config and remote config status are kept as bytes whatever they hold, but their
    # readable copies are rendered from the parsed messages: use valid ones.
    state = _parsable(state)
    document = _wire(agent_document(state))
    mapping.validate(state.uid, document, MAPPINGS)
    assert agent_from_source(document) == state
    touch = _wire(heartbeat_fields(state))
    merged = {**document, **touch, "opamp": {**document["opamp"], **touch["opamp"]}}  # type: ignore[dict-item]
    mapping.validate(state.uid, merged, MAPPINGS)
    assert agent_from_source(merged) == state


def test_a_document_of_mapping_version_2_is_bound_to_no_key() -> None:
    state = AgentState(instance_uid=b"\x01" * 16, enrolled_at=1.0, last_seen=2.0, key_id="edge")
    document = _wire(agent_document(state))
    del document["opamp"]["key_id"]  # type: ignore[attr-defined]
    assert agent_from_source(document) == AgentState(
        instance_uid=b"\x01" * 16, enrolled_at=1.0, last_seen=2.0
    )


@given(st.binary(min_size=16, max_size=16), st.binary(min_size=16, max_size=16))
def test_moved_documents(old: bytes, new: bytes) -> None:
    document = _wire(moved_document(old, new))
    mapping.validate("x", document, MAPPINGS)
    assert agent_from_source(document) == Moved(new)


def _parsable(state: AgentState) -> AgentState:
    def parses(
        data: bytes | None, kind: type[pb.EffectiveConfig] | type[pb.RemoteConfigStatus]
    ) -> bytes | None:
        if data is None:
            return None
        try:
            kind.FromString(data)
        except DecodeError:
            return kind().SerializeToString()
        return data

    return replace(
        state,
        effective_config=parses(state.effective_config, pb.EffectiveConfig),
        remote_config_status=parses(state.remote_config_status, pb.RemoteConfigStatus),
    )


def test_a_large_effective_config_is_not_copied_into_the_rendered_files() -> None:
    """Every update rewrites the whole document: above FILES_COPY_LIMIT the rendered copy would be
    most of what each heartbeat rewrites. The exact bytes stay, and the record round-trips."""
    from gateway.store.elasticsearch_documents import FILES_COPY_LIMIT, agent_from_source
    from harness.records import agent, effective_config

    small = agent(effective_config=effective_config("a: b\n"))
    large = agent(effective_config=effective_config("x" * (FILES_COPY_LIMIT + 1)))
    assert "files" in agent_document(small)["effective_config"]
    document = agent_document(large)
    assert set(document["effective_config"]) == {"hash"}
    assert agent_from_source(document) == large
