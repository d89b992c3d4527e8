from __future__ import annotations

from gateway.node import duplicates
from gateway.opamp import capabilities as caps
from gateway.proto import opamp_pb2 as pb
from tests.support.waiting import uid


def test_a_uid_changes_hands_at_most_limit_times_per_window() -> None:
    damper = duplicates.Takeovers(limit=2, window=60.0)
    assert damper.allow(uid(1), 0.0) and damper.allow(uid(1), 10.0)
    assert not damper.allow(uid(1), 20.0)
    assert damper.retry_after(uid(1), 20.0) == 40.0
    # Other uids are counted apart; the window slides.
    assert damper.allow(uid(2), 20.0)
    assert damper.retry_after(uid(2), 20.0) == 0.0 and damper.retry_after(uid(3), 20.0) == 0.0
    assert damper.allow(uid(1), 60.0)


def test_verdicts() -> None:
    damper = duplicates.Takeovers(limit=1, window=60.0)
    assert duplicates.verdict(True, damper, uid(1), 0.0) == "clone"
    assert duplicates.verdict(False, damper, uid(1), 0.0) == "reconnect"
    assert duplicates.verdict(False, damper, uid(1), 1.0) == "refused"
    # A clone is no takeover: it is never refused.
    assert duplicates.verdict(True, damper, uid(1), 2.0) == "clone"


def test_expired_uids_are_pruned_when_many_are_remembered() -> None:
    damper = duplicates.Takeovers(limit=1, window=1.0)
    for n in range(duplicates._PRUNE_AT):
        damper.allow(uid(n), 0.0)
    assert len(damper) == duplicates._PRUNE_AT
    damper.allow(uid(0), 5.0)
    assert len(damper) == 1


def test_a_clone_asks_for_a_uid_without_changing_the_message() -> None:
    msg = pb.AgentToServer(instance_uid=uid(1), sequence_num=3, flags=0)
    clone = duplicates.as_clone(msg)
    assert clone.flags & caps.REQUEST_INSTANCE_UID and clone.sequence_num == 3
    assert not msg.flags
