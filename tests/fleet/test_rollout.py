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
        counts.add(config_sync(state, FLEET.configs))
    assert counts.to_json() == {
        "matched": 3,
        "applied": 0,
        "applying": 1,
        "failed": 0,
        "pending": 1,
        "unsupported": 1,
    }
