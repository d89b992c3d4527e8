"""The heartbeat fast path (engine._heartbeat) decides exactly what the full rules (engine._handle) do.

States and messages are drawn around a plain heartbeat: each condition the fast path checks is
sometimes broken (sequence gap, other uid, RequestInstanceUid, changed capabilities, a sub-message,
a goodbye, a pending command, a disconnected record, a config to offer or to resend, a heartbeat
interval to offer, a connection settings status, packages to offer, a package status), so both paths
meet every case in which the fast path must step aside.
"""

from __future__ import annotations

from dataclasses import fields, replace
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from gateway.fleet.agent import AgentState
from gateway.fleet.desired import ConfigSet
from gateway.opamp import capabilities as caps, engine, heartbeat as heartbeat_offers
from gateway.opamp.connection_offers import SettingsSet
from gateway.opamp.engine import FleetView, Outcome
from gateway.proto import opamp_pb2 as pb
from tests.opamp.test_engine import NOW, REPORTING, UID, description, heartbeat
from tests.opamp.test_engine_config import FLEET as CONFIG_FLEET, HASH, OLD, config_set
from tests.opamp.test_engine_packages import ALL as PACKAGES_HASH, FLEET as PACKAGE_FLEET

OTHER_UID = bytes(range(1, 17))
NO_CONFIGS = FleetView()
OTHER_CONFIG = FleetView(configs=config_set(body="exporters: {}\n", name="other"), config_resend_after=60.0)
EMPTY_SET = FleetView(configs=ConfigSet())


def _offer(interval: int) -> pb.ConnectionSettingsOffers:
    offer = heartbeat_offers.settings_offer(interval)
    assert offer is not None
    return offer


OFFER = _offer(60)
HEARTBEATS = FleetView(settings=SettingsSet(heartbeat_offer=OFFER))
CONFIG_AND_HEARTBEATS = replace(CONFIG_FLEET, settings=SettingsSet(heartbeat_offer=OFFER))


def _status(config_hash: bytes, value: int) -> bytes:
    return pb.RemoteConfigStatus(last_remote_config_hash=config_hash, status=value).SerializeToString()  # type: ignore[arg-type]


_hashes = st.sampled_from([None, HASH, OLD])
_package_hashes = st.sampled_from([None, PACKAGES_HASH, OLD])
PACKAGES_AND_CONFIGS = replace(CONFIG_FLEET, packages=PACKAGE_FLEET.packages)


def _package_statuses(all_hash: bytes) -> bytes:
    return pb.PackageStatuses(server_provided_all_packages_hash=all_hash).SerializeToString(
        deterministic=True
    )


@st.composite
def states(draw: st.DrawFn) -> AgentState:
    return AgentState(
        instance_uid=draw(st.sampled_from([UID, OTHER_UID])),
        enrolled_at=NOW - 100,
        last_seen=NOW - draw(st.sampled_from([1.0, 30.0])),
        sequence_num=draw(st.integers(0, 5)),
        capabilities=draw(
            st.sampled_from(
                [
                    REPORTING,
                    caps.REPORTS_STATUS,
                    REPORTING | caps.ACCEPTS_RESTART_COMMAND,
                    REPORTING | heartbeat_offers.NEEDED,
                    REPORTING | caps.ACCEPTS_PACKAGES,
                    REPORTING | caps.ACCEPTS_PACKAGES | caps.REPORTS_PACKAGE_STATUSES,
                ]
            )
        ),
        description=draw(st.sampled_from([None, description().SerializeToString()])),
        health=draw(st.sampled_from([None, pb.ComponentHealth(healthy=True).SerializeToString()])),
        remote_config_status=draw(
            st.sampled_from(
                [
                    None,
                    _status(HASH, pb.RemoteConfigStatuses_APPLIED),
                    _status(OLD, pb.RemoteConfigStatuses_APPLIED),
                    _status(HASH, pb.RemoteConfigStatuses_FAILED),
                ]
            )
        ),
        disconnected=draw(st.sampled_from([False] * 5 + [True])),
        pending_command=draw(st.sampled_from([None] * 5 + [pb.CommandType_Restart])),
        node=draw(st.sampled_from(["", "node-a"])),
        transport=draw(st.sampled_from(["", "websocket", "http"])),
        offered_config_hash=draw(_hashes),
        offered_at=draw(st.sampled_from([0.0, NOW - 10, NOW - 100])),
        failed_config_hash=draw(_hashes),
        offered_settings_hash=draw(st.sampled_from([None, OFFER.hash, b"\x01" * 32])),
        key_id=draw(st.sampled_from(["", "edge"])),
        package_statuses=draw(
            st.sampled_from([None, _package_statuses(PACKAGES_HASH), _package_statuses(OLD)])
        ),
        offered_packages_hash=draw(_package_hashes),
        offered_packages_at=draw(st.sampled_from([0.0, NOW - 10, NOW - 100])),
    )


@st.composite
def heartbeats(draw: st.DrawFn, state: AgentState) -> pb.AgentToServer:
    """Mostly the agent's next plain heartbeat, sometimes with one thing that makes it more."""
    step = draw(st.sampled_from([1] * 6 + [0, 2]))
    caps_value = draw(st.sampled_from([state.capabilities] * 4 + [0, REPORTING | 0x400]))
    uid = draw(st.sampled_from([state.instance_uid] * 6 + [UID, OTHER_UID]))
    msg = heartbeat(state.sequence_num + step, uid=uid)
    msg.capabilities = caps_value
    extra = draw(
        st.sampled_from(
            ["none"] * 10
            + ["flags", "disconnect", "description", "health", "effective", "status", "settings", "packages"]
        )
    )
    if extra == "flags":
        msg.flags = caps.REQUEST_INSTANCE_UID
    elif extra == "disconnect":
        msg.agent_disconnect.SetInParent()
    elif extra == "description":
        msg.agent_description.CopyFrom(description())
    elif extra == "health":
        msg.health.healthy = True
    elif extra == "effective":
        msg.effective_config.config_map.config_map["a.yaml"].body = b"a: 1\n"
    elif extra == "status":
        msg.remote_config_status.last_remote_config_hash = HASH
    elif extra == "settings":
        msg.connection_settings_status.last_connection_settings_hash = OFFER.hash
        msg.connection_settings_status.status = pb.ConnectionSettingsStatuses_APPLIED
    elif extra == "packages":
        msg.package_statuses.server_provided_all_packages_hash = PACKAGES_HASH
    return msg


def _comparable(outcome: Outcome) -> tuple[Any, ...]:
    return (
        outcome.reply.SerializeToString(deterministic=True),
        outcome.write,
        outcome.durable,
        outcome.event,
        outcome.state,
    )


def _mint() -> bytes:
    return b"\xee" * 16


@settings(max_examples=1000, deadline=None)
@given(
    st.data(),
    st.sampled_from(
        [
            NO_CONFIGS,
            CONFIG_FLEET,
            OTHER_CONFIG,
            EMPTY_SET,
            HEARTBEATS,
            CONFIG_AND_HEARTBEATS,
            PACKAGE_FLEET,
            PACKAGES_AND_CONFIGS,
        ]
    ),
)
def test_fast_and_full_rules_agree(data: st.DataObject, fleet: FleetView) -> None:
    state = data.draw(states())
    msg = data.draw(heartbeats(state))
    # The key the client spoke with: keys off, or the one the agent is bound to (or adopts it).
    key_id = data.draw(st.sampled_from([None, "edge"]))
    fast = engine._heartbeat(state, msg, fleet, NOW)
    full = engine._handle(state, msg, fleet, NOW, _mint, key_id=key_id)
    assert _comparable(engine.handle(state, msg, fleet, NOW, _mint, key_id=key_id)) == _comparable(full)
    if fast is not None and (key_id is None or state.key_id == key_id):
        assert _comparable(fast) == _comparable(full)
        assert full.event == "heartbeat"


def _settled(**overrides: Any) -> AgentState:
    base = AgentState(
        instance_uid=UID,
        enrolled_at=NOW - 100,
        last_seen=NOW - 30,
        sequence_num=7,
        capabilities=REPORTING,
        description=description().SerializeToString(),
        remote_config_status=_status(HASH, pb.RemoteConfigStatuses_APPLIED),
    )
    return replace(base, **overrides)


@pytest.mark.parametrize("fleet", [NO_CONFIGS, CONFIG_FLEET], ids=["no configs", "config applied"])
def test_a_plain_heartbeat_takes_the_fast_path(fleet: FleetView) -> None:
    state = _settled()
    outcome = engine._heartbeat(state, heartbeat(8), fleet, NOW)
    assert outcome is not None
    assert outcome.state == replace(state, last_seen=NOW, sequence_num=8)
    assert outcome.write is not None and outcome.write.changed == {"last_seen", "sequence_num"}
    assert outcome.reply == pb.ServerToAgent(instance_uid=UID, capabilities=fleet.server_capabilities)


@pytest.mark.parametrize(
    ("state", "msg"),
    [
        (_settled(), heartbeat(9)),
        (_settled(), heartbeat(8, uid=OTHER_UID)),
        (_settled(), heartbeat(8, capabilities=REPORTING | caps.ACCEPTS_RESTART_COMMAND)),
        (_settled(disconnected=True), heartbeat(8)),
        (_settled(pending_command=pb.CommandType_Restart), heartbeat(8)),
        # A config to offer: the agent reported another hash.
        (_settled(remote_config_status=_status(OLD, pb.RemoteConfigStatuses_APPLIED)), heartbeat(8)),
        # An offer whose wait for a report ran out.
        (
            _settled(
                remote_config_status=None,
                offered_config_hash=HASH,
                offered_at=NOW - 61,
                capabilities=REPORTING | caps.REPORTS_REMOTE_CONFIG,
            ),
            heartbeat(8, capabilities=REPORTING | caps.REPORTS_REMOTE_CONFIG),
        ),
    ],
    ids=["gap", "other uid", "new capabilities", "disconnected", "command", "config", "resend"],
)
def test_what_is_more_than_a_heartbeat_takes_the_full_rules(state: AgentState, msg: pb.AgentToServer) -> None:
    assert engine._heartbeat(state, msg, CONFIG_FLEET, NOW) is None


def test_touched_copies_every_field() -> None:
    # Every field set to a value other than its default, so a field the copy forgot shows.
    values: dict[str, Any] = {
        "instance_uid": UID,
        "enrolled_at": 1.0,
        "last_seen": 2.0,
        "sequence_num": 3,
        "capabilities": 4,
        "description": b"d",
        "health": b"h",
        "effective_config": b"e",
        "remote_config_status": b"r",
        "disconnected": True,
        "previous_instance_uids": (OTHER_UID,),
        "pending_command": 0,
        "command_id": "c",
        "node": "n",
        "transport": "websocket",
        "offered_config_hash": HASH,
        "offered_at": 5.0,
        "failed_config_hash": OLD,
        "duplicate_of": OTHER_UID,
        "available_components": b"c",
        "oversized": ("health",),
        "offered_settings_hash": b"s",
        "key_id": "edge",
        "connection_settings_status": b"cs",
        "package_statuses": b"ps",
        "offered_packages_hash": b"p",
        "offered_packages_at": 6.0,
    }
    assert set(values) == {f.name for f in fields(AgentState)}
    state = AgentState(**values)
    touched = state.touched(9.0, 10)
    assert touched == replace(state, last_seen=9.0, sequence_num=10)
    assert type(touched) is AgentState and touched is not state
