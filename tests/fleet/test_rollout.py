from __future__ import annotations

from dataclasses import replace

import pytest

from gateway.fleet.agent import AgentState
from gateway.fleet.rollout import RolloutCounts, config_sync
from gateway.opamp import capabilities as caps
from gateway.proto import opamp_pb2 as pb
from tests.opamp.test_engine_config import FLEET, HASH, OLD, UID
from tests.store.store_helpers import description

BASE = AgentState(
    instance_uid=UID,
    enrolled_at=1.0,
    last_seen=1.0,
    capabilities=caps.ACCEPTS_REMOTE_CONFIG,
    description=description({"service.name": "otelcol-contrib"}),
)


def reported(config_hash: bytes, value: int) -> bytes:
    status = pb.RemoteConfigStatus(last_remote_config_hash=config_hash, status=value)  # type: ignore[arg-type]
    return status.SerializeToString()


@pytest.mark.parametrize(
    ("state", "expected"),
    [
        (BASE, "pending"),
        (replace(BASE, offered_config_hash=HASH), "applying"),
        (replace(BASE, remote_config_status=reported(HASH, pb.RemoteConfigStatuses_APPLIED)), "applied"),
        (replace(BASE, remote_config_status=reported(HASH, pb.RemoteConfigStatuses_APPLYING)), "applying"),
        (replace(BASE, remote_config_status=reported(HASH, pb.RemoteConfigStatuses_UNSET)), "applying"),
        (replace(BASE, remote_config_status=reported(HASH, pb.RemoteConfigStatuses_FAILED)), "failed"),
        # Rolled back: reports its old config, but the offer is remembered as failed.
        (
            replace(
                BASE,
                remote_config_status=reported(OLD, pb.RemoteConfigStatuses_FAILED),
                failed_config_hash=HASH,
            ),
            "failed",
        ),
        # Applied an older config, the new one not sent yet.
        (replace(BASE, remote_config_status=reported(OLD, pb.RemoteConfigStatuses_APPLIED)), "pending"),
        (replace(BASE, capabilities=caps.REPORTS_STATUS), "unsupported"),
        (replace(BASE, description=description({"service.name": "other"})), "none"),
    ],
)
def test_status(state: AgentState, expected: str) -> None:
    sync = config_sync(state, FLEET.configs)
    assert sync.status == expected
    assert sync.in_sync is (expected == "applied")
    body = sync.to_json()
    assert body["desired_hash"] == (None if expected == "none" else HASH.hex())


def test_counts() -> None:
    counts = RolloutCounts()
    for state in (BASE, replace(BASE, offered_config_hash=HASH), replace(BASE, capabilities=0)):
        counts.add(config_sync(state, FLEET.configs), state, now=2.0, offline_after=10.0)
    assert counts.to_json() == {
        "matched": 3,
        "applied": 0,
        "applying": 1,
        "failed": 0,
        "pending": 1,
        "unsupported": 1,
        "offline": 0,
        "disconnected": 0,
    }


def test_offline_and_disconnected_agents_are_counted_apart_and_never_hold_a_rollout_back() -> None:
    counts = RolloutCounts()
    applied = replace(
        BASE, remote_config_status=reported(HASH, pb.RemoteConfigStatuses_APPLIED), last_seen=95.0
    )
    gone = replace(BASE, last_seen=80.0)  # offline: 20 s quiet with offline_after 10
    left = replace(BASE, last_seen=99.0, disconnected=True)
    for state in (applied, gone, left):
        counts.add(config_sync(state, FLEET.configs), state, now=100.0, offline_after=10.0)
    body = counts.to_json()
    assert (body["matched"], body["applied"], body["pending"]) == (1, 1, 0)
    assert (body["offline"], body["disconnected"]) == (1, 1)
    # Exactly at offline_after an agent still counts (derive_status: "more than" offline_after).
    edge = RolloutCounts()
    edge.add(config_sync(gone, FLEET.configs), gone, now=90.0, offline_after=10.0)
    assert (edge.matched, edge.offline) == (1, 0)
