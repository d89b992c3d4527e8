"""The engine's remote config rules (issue: capability gating, no resend, FAILED handling)."""

from __future__ import annotations

from dataclasses import replace

import pytest

from gateway.fleet.agent import AgentState
from gateway.fleet.configs import Config, ConfigFile, ConfigSpec
from gateway.fleet.desired import ConfigSet
from gateway.fleet.selector import Selector
from gateway.opamp import capabilities as caps
from gateway.opamp.engine import FleetView, Outcome, handle
from gateway.proto import opamp_pb2 as pb
from tests.opamp.test_engine import NOW, REPORTING, UID, full_report, heartbeat

__all__ = ["FLEET", "HASH", "OLD", "UID"]

RESEND = 60.0
OLD = b"\x01" * 32


def config_set(body: str = "receivers: {}\n", name: str = "base") -> ConfigSet:
    spec = ConfigSpec(
        selector=Selector(match=(("service.name", "otelcol-contrib"),)),
        priority=0,
        files=(("collector.yaml", ConfigFile("text/yaml", body.encode())),),
    )
    return ConfigSet((Config(name, spec, 1, 1.0, 1.0, spec.digest()),))


FLEET = FleetView(configs=config_set(), config_resend_after=RESEND)
DESIRED = FLEET.configs.resolve(UID, {"service.name": "otelcol-contrib"})
assert DESIRED is not None
HASH = DESIRED.hash


def run(
    state: AgentState | None, msg: pb.AgentToServer, fleet: FleetView = FLEET, now: float = NOW
) -> Outcome:
    return handle(state, msg, fleet, now, lambda: pytest.fail("no uid should be minted"))


def status(
    config_hash: bytes, value: int = pb.RemoteConfigStatuses_APPLIED, error: str = ""
) -> pb.RemoteConfigStatus:
    return pb.RemoteConfigStatus(
        last_remote_config_hash=config_hash,
        status=value,  # type: ignore[arg-type]
        error_message=error,
    )


def reporting(seq: int, config_status: pb.RemoteConfigStatus) -> pb.AgentToServer:
    msg = heartbeat(seq)
    msg.remote_config_status.CopyFrom(config_status)
    return msg


def enrolled_with_offer() -> AgentState:
    outcome = run(None, full_report(0))
    assert outcome.reply.HasField("remote_config")
    assert outcome.state is not None
    return outcome.state


def test_first_contact_gets_the_desired_config() -> None:
    outcome = run(None, full_report(0))
    assert outcome.reply.remote_config.config_hash == HASH
    files = outcome.reply.remote_config.config.config_map
    assert dict(files.items()) == {
        "collector.yaml": pb.AgentConfigFile(body=b"receivers: {}\n", content_type="text/yaml")
    }
    assert outcome.state is not None
    assert (outcome.state.offered_config_hash, outcome.state.offered_at) == (HASH, NOW)
    assert outcome.write is not None and "offered_config_hash" in outcome.write.changed
    assert not outcome.write.is_touch


def test_only_agents_that_accept_remote_config() -> None:
    outcome = run(None, full_report(0, capabilities=caps.REPORTS_STATUS | caps.REPORTS_HEARTBEAT))
    assert not outcome.reply.HasField("remote_config")
    assert outcome.state is not None and outcome.state.offered_config_hash is None


def test_no_config_when_nothing_matches() -> None:
    for fleet in (FleetView(), FleetView(configs=ConfigSet())):
        outcome = run(None, full_report(0), fleet)
        assert not outcome.reply.HasField("remote_config")
    staged = replace(
        FLEET,
        configs=ConfigSet(
            tuple(replace(c, spec=replace(c.spec, selector=Selector())) for c in FLEET.configs.configs)
        ),
    )
    assert not run(None, full_report(0), staged).reply.HasField("remote_config")


def test_not_resent_while_the_offer_waits() -> None:
    state = enrolled_with_offer()
    outcome = run(state, heartbeat(1), now=NOW + RESEND - 1)
    assert not outcome.reply.HasField("remote_config")
    assert outcome.write is not None and outcome.write.is_touch


def test_resent_after_the_timeout() -> None:
    # Only to an agent that reports on its config (ReportsRemoteConfig): its silence means the
    # offer may be lost.
    capabilities = REPORTING | caps.REPORTS_REMOTE_CONFIG
    state = replace(enrolled_with_offer(), capabilities=capabilities)
    outcome = run(state, heartbeat(1, capabilities=capabilities), now=NOW + RESEND)
    assert outcome.reply.remote_config.config_hash == HASH
    assert outcome.state is not None and outcome.state.offered_at == NOW + RESEND


@pytest.mark.parametrize(
    "value",
    [pb.RemoteConfigStatuses_APPLIED, pb.RemoteConfigStatuses_APPLYING, pb.RemoteConfigStatuses_UNSET],
)
def test_not_sent_once_reported_for_the_desired_hash(value: int) -> None:
    state = enrolled_with_offer()
    outcome = run(state, reporting(1, status(HASH, value)))
    assert not outcome.reply.HasField("remote_config")
    assert outcome.state is not None and outcome.state.offered_config_hash is None
    later = run(outcome.state, heartbeat(2), now=NOW + 10 * RESEND)
    assert not later.reply.HasField("remote_config")


def test_a_report_is_durable() -> None:
    outcome = run(enrolled_with_offer(), reporting(1, status(HASH)))
    assert outcome.durable


def test_failed_hash_is_not_sent_again() -> None:
    outcome = run(
        enrolled_with_offer(), reporting(1, status(HASH, pb.RemoteConfigStatuses_FAILED, "bad yaml"))
    )
    assert not outcome.reply.HasField("remote_config")
    assert outcome.state is not None and outcome.state.failed_config_hash == HASH
    later = run(outcome.state, heartbeat(2), now=NOW + 10 * RESEND)
    assert not later.reply.HasField("remote_config")


def test_failed_with_the_rolled_back_hash_marks_the_offer_failed() -> None:
    # The collector supervisor reports FAILED with the hash of the config it rolled back to.
    outcome = run(enrolled_with_offer(), reporting(1, status(OLD, pb.RemoteConfigStatuses_FAILED)))
    assert outcome.state is not None and outcome.state.failed_config_hash == HASH
    assert not outcome.reply.HasField("remote_config")
    assert not run(outcome.state, heartbeat(2), now=NOW + 10 * RESEND).reply.HasField("remote_config")


def test_failed_then_a_new_desired_hash_is_sent() -> None:
    failed = run(enrolled_with_offer(), reporting(1, status(HASH, pb.RemoteConfigStatuses_FAILED))).state
    assert failed is not None
    fixed = replace(FLEET, configs=config_set("receivers: {otlp: {}}\n"))
    outcome = run(failed, heartbeat(2), fixed)
    new_hash = outcome.reply.remote_config.config_hash
    assert new_hash and new_hash != HASH
    assert outcome.state is not None
    assert (outcome.state.offered_config_hash, outcome.state.failed_config_hash) == (new_hash, None)
    # And back to the config that failed: the desired hash changed in between, so it is sent again.
    back = run(outcome.state, reporting(3, status(new_hash)), FLEET)
    assert back.reply.remote_config.config_hash == HASH


def test_a_new_report_ends_the_wait() -> None:
    state = enrolled_with_offer()
    # The agent reports on its old config (it had not applied the offer yet): the offer is re-made.
    outcome = run(state, reporting(1, status(OLD)))
    assert outcome.reply.remote_config.config_hash == HASH
    # A repeat of the same report is not a new report.
    assert outcome.state is not None
    again = run(outcome.state, reporting(2, status(OLD)), now=NOW + 1)
    assert not again.reply.HasField("remote_config")


def test_config_change_reaches_an_agent_that_applied_the_old_one() -> None:
    applied = run(enrolled_with_offer(), reporting(1, status(HASH))).state
    assert applied is not None
    changed = replace(FLEET, configs=config_set("exporters: {}\n"))
    outcome = run(applied, heartbeat(2), changed)
    assert outcome.reply.HasField("remote_config")
    assert outcome.reply.remote_config.config_hash != HASH


def test_no_config_in_reply_to_a_disconnect() -> None:
    state = enrolled_with_offer()
    goodbye = heartbeat(1)
    goodbye.agent_disconnect.SetInParent()
    assert not run(state, goodbye, now=NOW + 10 * RESEND).reply.HasField("remote_config")


def test_a_pending_command_waits_for_a_reply_without_config() -> None:
    first = run(None, full_report(0, capabilities=REPORTING | caps.ACCEPTS_RESTART_COMMAND)).state
    assert first is not None
    state = replace(first, pending_command=pb.CommandType_Restart, offered_config_hash=None)
    with_config = run(state, heartbeat(1, capabilities=REPORTING | caps.ACCEPTS_RESTART_COMMAND))
    assert with_config.reply.HasField("remote_config") and not with_config.reply.HasField("command")
    assert with_config.state is not None and with_config.state.pending_command == pb.CommandType_Restart
    after = run(with_config.state, heartbeat(2, capabilities=REPORTING | caps.ACCEPTS_RESTART_COMMAND))
    assert after.reply.HasField("command") and not after.reply.HasField("remote_config")


def test_failed_then_a_changed_report_gets_the_config_again() -> None:
    # Spec: if the reported hash differs from the desired one the server MUST include remote_config.
    failed = run(enrolled_with_offer(), reporting(1, status(OLD, pb.RemoteConfigStatuses_FAILED))).state
    assert failed is not None and failed.failed_config_hash == HASH
    # The agent restarted on its old config and says so: answered with the desired config.
    outcome = run(failed, reporting(2, status(OLD, pb.RemoteConfigStatuses_APPLIED)))
    assert outcome.reply.remote_config.config_hash == HASH
    assert outcome.state is not None and outcome.state.failed_config_hash is None
    # It fails again: not pushed again in a loop.
    again = run(outcome.state, reporting(3, status(OLD, pb.RemoteConfigStatuses_FAILED)))
    assert not again.reply.HasField("remote_config")
    assert again.state is not None and again.state.failed_config_hash == HASH
    assert not run(again.state, heartbeat(4), now=NOW + 10 * RESEND).reply.HasField("remote_config")


def test_a_repeated_failed_report_keeps_the_failed_hash() -> None:
    failed = run(enrolled_with_offer(), reporting(1, status(OLD, pb.RemoteConfigStatuses_FAILED))).state
    assert failed is not None
    repeat = run(failed, reporting(2, status(OLD, pb.RemoteConfigStatuses_FAILED, "still bad")))
    assert not repeat.reply.HasField("remote_config")
    assert repeat.state is not None and repeat.state.failed_config_hash == HASH


SILENT = caps.REPORTS_STATUS | caps.ACCEPTS_REMOTE_CONFIG | caps.REPORTS_HEARTBEAT


def test_no_resend_loop_to_an_agent_that_never_reports_config() -> None:
    first = run(None, full_report(0, capabilities=SILENT))
    assert first.reply.remote_config.config_hash == HASH
    assert first.state is not None
    later = run(first.state, heartbeat(1, capabilities=SILENT), now=NOW + 10 * RESEND)
    assert not later.reply.HasField("remote_config")
    # A new connection does not reset what the server knows it sent.
    from gateway.opamp.engine import on_new_connection

    assert on_new_connection(first.state) == first.state
    # A new desired config is sent once.
    changed = replace(FLEET, configs=config_set("exporters: {}\n"))
    assert run(first.state, heartbeat(1, capabilities=SILENT), changed).reply.HasField("remote_config")


def test_a_new_connection_resets_the_offer_of_an_agent_that_reports() -> None:
    from gateway.opamp.engine import on_new_connection

    state = replace(enrolled_with_offer(), capabilities=REPORTING | caps.REPORTS_REMOTE_CONFIG)
    fresh = on_new_connection(state)
    assert (fresh.offered_config_hash, fresh.offered_at) == (None, 0.0)


def test_a_full_report_without_config_status_is_not_full() -> None:
    # An agent with ReportsRemoteConfig that leaves out remote_config_status: ask, do not offer yet.
    capabilities = REPORTING | caps.REPORTS_REMOTE_CONFIG
    outcome = run(None, full_report(0, capabilities=capabilities))
    assert outcome.reply.flags & caps.REPORT_FULL_STATE
    assert not outcome.reply.HasField("remote_config")
    assert outcome.state is not None
    # Its full state says it already runs the desired config: nothing to send.
    full = full_report(1, capabilities=capabilities)
    full.remote_config_status.CopyFrom(status(HASH))
    answered = run(outcome.state, full)
    assert not answered.reply.flags & caps.REPORT_FULL_STATE
    assert not answered.reply.HasField("remote_config")
    # One that never had a remote config answers in step without a status: offered then.
    fresh = run(outcome.state, full_report(1, capabilities=capabilities))
    assert not fresh.reply.flags & caps.REPORT_FULL_STATE
    assert fresh.reply.remote_config.config_hash == HASH
