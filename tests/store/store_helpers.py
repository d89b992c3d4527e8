"""Builders for agent records as the engine would store them, for the store and writer tests (the
record builders themselves live in harness.records, which benchmarks use too)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import replace

from gateway.fleet.agent import AgentState, AgentWrite
from gateway.proto import opamp_pb2 as pb
from gateway.store.base import Store
from harness.records import (
    FULL,
    agent,
    any_value,
    description,
    effective_config,
    full,
    health,
    key_values,
    new_uid,
)

__all__ = [
    "FULL",
    "TOUCH",
    "StoreFactory",
    "agent",
    "any_value",
    "description",
    "effective_config",
    "full",
    "health",
    "heartbeat",
    "key_values",
    "moved",
    "new_uid",
    "remote_config_status",
    "touch",
    "uid_from_int",
]

TOUCH = frozenset({"last_seen", "sequence_num"})


StoreFactory = Callable[[], Awaitable[Store]]


def uid_from_int(n: int) -> bytes:
    """Deterministic uids whose canonical text sorts like `n`."""
    return n.to_bytes(16, "big")


def remote_config_status(config_hash: bytes = b"\x01" * 32) -> bytes:
    msg = pb.RemoteConfigStatus(last_remote_config_hash=config_hash, status=pb.RemoteConfigStatuses_APPLIED)
    return msg.SerializeToString(deterministic=True)


def touch(state: AgentState) -> AgentWrite:
    return AgentWrite(state=state, changed=TOUCH)


def heartbeat(state: AgentState, last_seen: float) -> AgentState:
    return replace(state, last_seen=last_seen, sequence_num=state.sequence_num + 1)


def moved(state: AgentState, new: bytes, last_seen: float) -> AgentWrite:
    """The write of `state` moving to uid `new`, as the engine makes it."""
    after = replace(
        state,
        instance_uid=new,
        last_seen=last_seen,
        sequence_num=state.sequence_num + 1,
        previous_instance_uids=(*state.previous_instance_uids, state.instance_uid),
    )
    return AgentWrite(
        state=after,
        changed=frozenset({"instance_uid", "last_seen", "sequence_num"}),
        previous_uid=state.instance_uid,
    )
