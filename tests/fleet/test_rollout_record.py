"""The rollout record: JSON round trip, events kept, unreadable records refused."""

from __future__ import annotations

from typing import Any

import pytest

from gateway.fleet.rollout_record import MAX_EVENTS, UnreadableRollout, rollout_from_json
from tests.store.test_contract_rollouts import rollout


def test_round_trip() -> None:
    record = rollout(state="halted", wave=1)
    assert rollout_from_json(record.to_json()) == record
    first = rollout(previous_version=None)
    assert rollout_from_json(first.to_json()) == first


def test_each_change_is_an_event_and_only_the_last_are_kept() -> None:
    record = rollout()
    assert [(e.state, e.wave, e.reason) for e in record.events] == [("progressing", 0, "version 2 started")]
    moved = record.moved(20.0, "paused", "paused by the API")
    assert (moved.state, moved.updated_at, moved.events[-1].at) == ("paused", 20.0, 20.0)
    for n in range(MAX_EVENTS + 5):
        moved = moved.moved(30.0 + n, "progressing", f"step {n}", wave=n % 3)
    assert len(moved.events) == MAX_EVENTS
    assert moved.events[-1].reason == f"step {MAX_EVENTS + 4}" and moved.events[-1].wave == moved.wave


@pytest.mark.parametrize(
    "change",
    [
        {"state": "exploded"},
        {"version": "two"},
        {"strategy": {"strategy": "sometimes"}},
        {"events": [{"at": 1.0, "state": "paused", "wave": 0}]},
        {"events": [{"at": 1.0, "state": "nope", "wave": 0, "reason": ""}]},
        {"cutoff": None},
    ],
)
def test_unreadable_records_are_refused(change: dict[str, Any]) -> None:
    with pytest.raises(UnreadableRollout):
        rollout_from_json({**rollout().to_json(), **change})
    with pytest.raises(UnreadableRollout):
        rollout_from_json([])
