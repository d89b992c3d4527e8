"""Agent descriptions are bounded in bytes and attributes (issue 20, finding 4)."""

from __future__ import annotations

from gateway.opamp.engine import MAX_DESCRIPTION_ATTRIBUTES, FleetView, handle
from gateway.proto import anyvalue_pb2 as av, opamp_pb2 as pb
from tests.opamp.test_engine import NOW, UID, enrolled, full_report


def _no_mint() -> bytes:
    raise AssertionError("no uid should be minted")


def test_a_description_over_the_byte_limit_is_refused_and_the_record_kept() -> None:
    fleet = FleetView(max_description_bytes=200)
    state = enrolled()
    msg = full_report(seq=1)
    msg.agent_description.non_identifying_attributes.add(key="big", value=av.AnyValue(string_value="x" * 300))
    outcome = handle(state, msg, fleet, NOW, _no_mint)
    assert outcome.rejected and outcome.write is None
    assert outcome.reply.instance_uid == UID
    assert outcome.reply.error_response.type == pb.ServerErrorResponseType_BadRequest
    assert "the limit is 200" in outcome.reply.error_response.error_message


def test_a_description_with_too_many_attributes_is_refused() -> None:
    msg = full_report(seq=0)
    for i in range(MAX_DESCRIPTION_ATTRIBUTES):
        msg.agent_description.non_identifying_attributes.add(key=f"k{i}")
    outcome = handle(None, msg, FleetView(max_description_bytes=1 << 30), NOW, _no_mint)
    assert outcome.rejected
    assert f"the limit is {MAX_DESCRIPTION_ATTRIBUTES}" in outcome.reply.error_response.error_message


def test_a_description_within_the_bounds_is_kept() -> None:
    msg = full_report(seq=0)
    outcome = handle(
        None, msg, FleetView(max_description_bytes=msg.agent_description.ByteSize()), NOW, _no_mint
    )
    assert not outcome.rejected
    assert outcome.state is not None and outcome.state.description is not None
