"""Available components: asked for (ReportAvailableComponents) when the hash has no stored details,
stored when they come, shown in the API view."""

from __future__ import annotations

from gateway.fleet.agent import AgentState
from gateway.fleet.render import available_components_json
from gateway.opamp import capabilities as caps
from gateway.proto import anyvalue_pb2 as av, opamp_pb2 as pb
from tests.opamp.test_engine import REPORTING, enrolled, heartbeat, run

CAPS = REPORTING | caps.REPORTS_AVAILABLE_COMPONENTS


def _components(hash_: bytes, details: bool) -> pb.AvailableComponents:
    components = pb.AvailableComponents(hash=hash_)
    if details:
        receiver = components.components["receivers"]
        receiver.sub_component_map["otlp"].metadata.add(
            key="code.namespace", value=av.AnyValue(string_value="x")
        )
    return components


def _message(seq: int, hash_: bytes, details: bool = False, capabilities: int = CAPS) -> pb.AgentToServer:
    msg = heartbeat(seq, capabilities=capabilities)
    msg.available_components.CopyFrom(_components(hash_, details))
    return msg


def _after(state: AgentState, msg: pb.AgentToServer) -> tuple[bool, AgentState]:
    outcome = run(state, msg)
    assert outcome.state is not None
    return bool(outcome.reply.flags & caps.REPORT_AVAILABLE_COMPONENTS), outcome.state


def test_a_new_hash_is_asked_for_then_stored_and_not_asked_again() -> None:
    state = enrolled(capabilities=CAPS)
    asked, state = _after(state, _message(1, b"h1"))
    assert asked and state.available_components is None
    asked, state = _after(state, _message(2, b"h1", details=True))
    assert not asked and state.available_components is not None
    asked, state = _after(state, _message(3, b"h1"))
    assert not asked
    # A changed hash: asked again.
    asked, state = _after(state, _message(4, b"h2"))
    assert asked


def test_details_are_stored_once_and_shown() -> None:
    state = enrolled(capabilities=CAPS)
    outcome = run(state, _message(1, b"h1", details=True))
    assert outcome.write is not None and "available_components" in outcome.write.changed
    assert outcome.state is not None and outcome.state.available_components is not None
    again = run(outcome.state, _message(2, b"h1", details=True))
    assert again.write is not None and "available_components" not in again.write.changed
    shown = available_components_json(outcome.state.available_components)
    assert shown == {
        "hash": b"h1".hex(),
        "components": {
            "receivers": {
                "metadata": {},
                "components": {"otlp": {"metadata": {"code.namespace": "x"}, "components": {}}},
            }
        },
    }


def test_not_asked_without_the_capability_or_the_field() -> None:
    state = enrolled(capabilities=REPORTING)
    assert not _after(state, _message(1, b"h1", capabilities=REPORTING))[0]
    assert not _after(enrolled(capabilities=CAPS), heartbeat(1, capabilities=CAPS))[0]
