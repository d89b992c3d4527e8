"""AgentState's generated copies (touched, updated) give what dataclasses.replace gives."""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

import pytest

from gateway.fleet.agent import AgentState
from harness.records import agent, description, health, new_uid

# A value for every field, unlike the one each field has in agent().
_OTHER: dict[str, Any] = {
    "instance_uid": new_uid(),
    "enrolled_at": 5.0,
    "last_seen": 6.0,
    "sequence_num": 7,
    "capabilities": 3,
    "description": description({"service.name": "other"}),
    "health": health(False),
    "effective_config": b"e",
    "remote_config_status": b"r",
    "disconnected": True,
    "previous_instance_uids": (new_uid(),),
    "pending_command": 1,
    "command_id": "c",
    "node": "n",
    "transport": "http",
    "offered_config_hash": b"o",
    "offered_at": 8.0,
    "failed_config_hash": b"f",
    "offered_settings_hash": b"s",
    "duplicate_of": new_uid(),
    "available_components": b"a",
    "oversized": ("description",),
    "key_id": "k",
    "connection_settings_status": b"c",
    "package_statuses": b"p",
    "offered_packages_hash": b"h",
    "offered_packages_at": 9.0,
}


def test_every_field_has_another_value_here() -> None:
    assert set(_OTHER) == {f.name for f in fields(AgentState)}


@pytest.mark.parametrize("name", sorted(_OTHER))
def test_updated_changes_one_field_as_replace_does(name: str) -> None:
    state = agent(new_uid(), last_seen=1.0)
    changed = state.updated(**{name: _OTHER[name]})
    assert changed == replace(state, **{name: _OTHER[name]})
    assert getattr(changed, name) == _OTHER[name] != getattr(state, name)


def test_updated_changes_many_fields_and_leaves_the_original_alone() -> None:
    state = agent(new_uid(), last_seen=1.0)
    before = replace(state)
    assert state.updated(**_OTHER) == AgentState(**_OTHER)
    assert state.updated() == state
    assert state == before


def test_updated_refuses_a_name_that_is_not_a_field() -> None:
    with pytest.raises(TypeError, match="no field last_sen"):
        agent(new_uid(), last_seen=1.0).updated(last_sen=2.0)
