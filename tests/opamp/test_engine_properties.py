from __future__ import annotations

import itertools

from hypothesis import given, settings, strategies as st

from gateway.fleet.render import agent_json
from gateway.opamp.engine import FleetView, handle
from gateway.proto import opamp_pb2 as pb
from tests.support.messages import agent_to_server

_FIELDS_AFTER_ERROR = (
    "remote_config",
    "connection_settings",
    "packages_available",
    "agent_identification",
    "command",
    "custom_capabilities",
    "custom_message",
)


@settings(max_examples=150, deadline=None)
@given(st.lists(agent_to_server(), min_size=1, max_size=6))
def test_any_message_sequence_is_answered_and_renders(messages: list[pb.AgentToServer]) -> None:
    counter = itertools.count()
    state = None
    now = 1_700_000_000.0
    for msg in messages:
        now += 1
        outcome = handle(state, msg, FleetView(), now, lambda: next(counter).to_bytes(16, "big"))
        reply = outcome.reply
        assert reply.instance_uid == msg.instance_uid
        if reply.HasField("error_response"):
            assert all(not reply.HasField(name) for name in _FIELDS_AFTER_ERROR)
            assert reply.flags == 0 and reply.capabilities == 0
            assert outcome.write is None
            continue
        assert reply.capabilities & pb.ServerCapabilities_AcceptsStatus
        if outcome.state is not None:
            assert len(outcome.state.instance_uid) == 16
            # Whatever was stored can be shown by the admin API.
            agent_json(outcome.state, now, 300.0)
            state = outcome.state
        # Replies always serialize.
        reply.SerializeToString()
