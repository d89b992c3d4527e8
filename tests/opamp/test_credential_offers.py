"""Per-agent credentials in the engine (gateway/opamp/credential_offers.py, gateway/fleet/credentials.py):
who is offered a credential of its own and when one is minted, the offer's stable hash combined with
the operator's parts, activation by use or by an APPLIED report, what is refused for which uid, and
that no secret is kept anywhere but in the reply."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import replace

import pytest
from hypothesis import given, settings, strategies as st

from gateway.fleet import credentials
from gateway.fleet.agent import AgentState
from gateway.fleet.connection_settings import ConnectionSettings, parse_spec
from gateway.fleet.credentials import AgentCredential, Minted, OwnCredential
from gateway.opamp import capabilities as caps, credential_offers, engine, heartbeat
from gateway.opamp.connection_offers import SettingsSet, reference
from gateway.opamp.engine import FleetView, Outcome, handle
from gateway.opamp.push import config_due, config_push
from gateway.proto import opamp_pb2 as pb
from tests.opamp.test_engine import NOW, UID, description, full_report, heartbeat as heartbeat_msg

OTHER_UID = bytes(range(1, 17))
ENDPOINT = "wss://opamp.example.com/v1/opamp"
ACCEPTS = caps.ACCEPTS_OPAMP_CONNECTION_SETTINGS
HEARTBEATS = caps.REPORTS_HEARTBEAT
STATUS = caps.REPORTS_CONNECTION_SETTINGS_STATUS
METRICS = pb.AgentCapabilities_ReportsOwnMetrics
CAPS = caps.REPORTS_STATUS | ACCEPTS | HEARTBEATS | STATUS | METRICS
KEY = "edge"


def _metrics_settings(endpoint: str = "https://otlp.example.com/v1/metrics") -> ConnectionSettings:
    body = {
        "selector": {"match": {"service.name": "otelcol-contrib"}},
        "own_metrics": {"destination_endpoint": endpoint},
    }
    spec = parse_spec("telemetry", body)
    return ConnectionSettings("telemetry", spec, 1, NOW, NOW, spec.digest())


def _fleet(*stored: ConnectionSettings, endpoint: str = ENDPOINT, interval: int = 30) -> FleetView:
    settings_set = SettingsSet(
        tuple(stored), heartbeat_offer=heartbeat.settings_offer(interval), credential_endpoint=endpoint
    )
    return FleetView(server_capabilities=caps.server_capabilities(True), settings=settings_set)


PER_AGENT = _fleet()
SHARED = _fleet(endpoint="")


_SERIAL = itertools.count()


class Mints:
    """Credentials in the real format, each one new (a serial number instead of randomness)."""

    def __init__(self) -> None:
        self.made: list[Minted] = []

    def __call__(self, uid: bytes) -> Minted:
        token = f"{credentials.PREFIX}.{uid.hex()}.{next(_SERIAL):043d}"
        minted = Minted(token, credentials.digest_of(token))
        self.made.append(minted)
        return minted


def _no_uid() -> bytes:
    raise AssertionError("no uid should be minted")


def _no_credential(uid: bytes) -> Minted:
    raise AssertionError("no credential should be minted")


def run(
    state: AgentState | None,
    msg: pb.AgentToServer,
    fleet: FleetView = PER_AGENT,
    *,
    record: AgentCredential | None = None,
    own: OwnCredential | None = None,
    key_id: str | None = KEY,
    mint: object = _no_credential,
    now: float = NOW,
) -> Outcome:
    return handle(
        state,
        msg,
        fleet,
        now,
        _no_uid,
        key_id=None if own is not None else key_id,
        credential=record,
        own=own,
        mint_credential=mint,  # type: ignore[arg-type]
    )


def _token_in(offer: pb.ConnectionSettingsOffers) -> str:
    [header] = [h for h in offer.opamp.headers.headers if h.key == "Authorization"]
    scheme, _, token = header.value.partition(" ")
    assert scheme == "Bearer"
    return token


def _own(token: str) -> OwnCredential:
    own = credentials.parse(token)
    assert own is not None
    return own


def _enrolled(fleet: FleetView = PER_AGENT, capabilities: int = CAPS) -> tuple[Outcome, Mints]:
    mints = Mints()
    outcome = run(None, full_report(0, capabilities=capabilities), fleet, mint=mints)
    return outcome, mints


@pytest.fixture
def switched() -> Iterator[tuple[AgentState, AgentCredential, str]]:
    """An agent that enrolled with a shared key, was offered its credential and connected with it."""
    outcome, mints = _enrolled()
    assert outcome.state is not None and outcome.credential is not None
    token = mints.made[0].token
    own = _own(token)
    first = run(outcome.state, heartbeat_msg(1, capabilities=CAPS), record=outcome.credential.new, own=own)
    assert first.state is not None and first.credential is not None
    record = first.credential.new
    assert record is not None
    yield first.state, record, token


# -- the offer ------------------------------------------------------------------------------------


def test_an_agent_enrolled_with_a_shared_key_is_offered_a_credential_of_its_own() -> None:
    fleet = _fleet(_metrics_settings())
    outcome, mints = _enrolled(fleet)
    offer = outcome.reply.connection_settings
    [minted] = mints.made
    assert offer.opamp.destination_endpoint == ENDPOINT
    assert _token_in(offer) == minted.token
    assert minted.token.startswith(f"oagc1.{UID.hex()}.")
    assert offer.opamp.heartbeat_interval_seconds == 30
    # Combined with the operator's parts, in one ConnectionSettingsOffers with one hash.
    assert offer.own_metrics.destination_endpoint == "https://otlp.example.com/v1/metrics"
    assert len(offer.hash) == 32
    assert outcome.state is not None and outcome.state.offered_settings_hash == offer.hash
    # Stored before the reply goes out: only the digest, pending until the agent uses it.
    assert outcome.durable and outcome.credential is not None and outcome.credential.new is not None
    opamp_hash = outcome.credential.new.opamp_hash
    assert outcome.credential == engine.CredentialChange(
        None, AgentCredential(pending=minted.digest, opamp_hash=opamp_hash, updated_at=NOW)
    )
    assert outcome.credential.new is not None and outcome.credential.new.kind == "shared"


def test_the_hash_is_that_of_the_reference_form_the_same_on_every_node() -> None:
    outcome, mints = _enrolled()
    offer = outcome.reply.connection_settings
    [minted] = mints.made
    # Another node computes the same offer from the stored digest alone: same hash, no secret.
    reference_form = PER_AGENT.settings.credential_offer_for(outcome.state, minted.digest)  # type: ignore[arg-type]
    assert reference_form.offer.hash == offer.hash
    assert [(h.key, h.value) for h in reference_form.offer.opamp.headers.headers] == [
        ("Authorization", reference(minted.digest))
    ]
    assert minted.token not in str(reference_form.offer)
    rebuilt = pb.ConnectionSettingsOffers()
    rebuilt.CopyFrom(offer)
    credential_offers.reveal(rebuilt, "x")
    assert rebuilt.hash == offer.hash


def test_offered_once_no_new_credential_while_the_agent_keeps_its_shared_key() -> None:
    outcome, _ = _enrolled()
    assert outcome.state is not None and outcome.credential is not None
    record = outcome.credential.new
    # It never switches: every message is accepted with the shared key, nothing is minted again,
    # and its pending credential stays valid for when it does.
    state = outcome.state
    for seq in range(1, 4):
        again = run(state, heartbeat_msg(seq, capabilities=CAPS), record=record)
        assert not again.forbidden and not again.reply.HasField("connection_settings")
        assert again.credential is None and again.event == "heartbeat"
        assert again.state is not None
        state = again.state
    assert record is not None and record.pending is not None and record.active is None


@pytest.mark.parametrize(
    "capabilities",
    [caps.REPORTS_STATUS | HEARTBEATS, caps.REPORTS_STATUS | METRICS],
    ids=["heartbeats", "metrics"],
)
def test_an_agent_without_the_capability_keeps_the_shared_key(capabilities: int) -> None:
    outcome, mints = _enrolled(_fleet(_metrics_settings()), capabilities)
    assert outcome.credential is None and not mints.made
    assert not outcome.reply.connection_settings.HasField("opamp")


def test_with_shared_credentials_nothing_is_minted() -> None:
    outcome, mints = _enrolled(SHARED)
    assert outcome.credential is None and not mints.made
    # The heartbeat offer as before per-agent credentials existed.
    assert outcome.reply.connection_settings == heartbeat.settings_offer(30)


def test_the_heartbeat_interval_only_for_agents_that_report_heartbeats() -> None:
    outcome, _ = _enrolled(capabilities=caps.REPORTS_STATUS | ACCEPTS)
    offer = outcome.reply.connection_settings
    assert offer.opamp.destination_endpoint == ENDPOINT
    assert offer.opamp.heartbeat_interval_seconds == 0


# -- switching, and what is refused ---------------------------------------------------------------


def test_the_first_use_activates_it_and_the_shared_key_is_refused_from_then_on(
    switched: tuple[AgentState, AgentCredential, str],
) -> None:
    state, record, token = switched
    assert (
        record.kind == "per_agent"
        and record.active == credentials.digest_of(token)
        and record.pending is None
    )
    # No new offer after the switch: the reference-form hash did not change.
    ok = run(state, heartbeat_msg(2, capabilities=CAPS), record=record, own=_own(token))
    assert not ok.forbidden and not ok.reply.HasField("connection_settings") and ok.credential is None
    refused = run(state, heartbeat_msg(2, capabilities=CAPS), record=record, key_id=KEY)
    assert refused.forbidden and refused.refusal == credentials.OWN_CREDENTIAL_REQUIRED
    assert refused.write is None and refused.state is None


def test_activation_is_part_of_whatever_the_message_does(
    switched: tuple[AgentState, AgentCredential, str],
) -> None:
    outcome, mints = _enrolled()
    assert outcome.state is not None and outcome.credential is not None
    msg = full_report(1, capabilities=CAPS)
    msg.health.healthy = True
    first = run(outcome.state, msg, record=outcome.credential.new, own=_own(mints.made[0].token))
    assert first.credential is not None and first.credential.expected == outcome.credential.new
    assert first.credential.new is not None and first.credential.new.kind == "per_agent"
    assert first.durable and first.state is not None and first.state.health is not None


def test_a_credential_is_refused_for_any_other_uid(switched: tuple[AgentState, AgentCredential, str]) -> None:
    state, record, token = switched
    other = replace(state, instance_uid=OTHER_UID)
    refused = run(other, heartbeat_msg(2, uid=OTHER_UID, capabilities=CAPS), record=None, own=_own(token))
    assert refused.forbidden and refused.refusal == credentials.CREDENTIAL_OF_ANOTHER_AGENT
    # Nor may it enroll a new agent.
    stranger = run(None, full_report(0, uid=OTHER_UID, capabilities=CAPS), record=None, own=_own(token))
    assert stranger.forbidden


def test_a_credential_whose_agent_is_gone_enrolls_nothing(
    switched: tuple[AgentState, AgentCredential, str],
) -> None:
    _, record, token = switched
    gone = run(None, full_report(0, capabilities=CAPS), record=record, own=_own(token))
    assert gone.forbidden and gone.refusal == credentials.CREDENTIAL_REFUSED


def test_a_wrong_or_replaced_credential_is_refused(switched: tuple[AgentState, AgentCredential, str]) -> None:
    state, record, token = switched
    forged = OwnCredential(UID, credentials.digest_of(token + "x"))
    refused = run(state, heartbeat_msg(2, capabilities=CAPS), record=record, own=forged)
    assert refused.forbidden and refused.refusal == credentials.CREDENTIAL_REFUSED


def test_revoked_refuses_both_kinds(switched: tuple[AgentState, AgentCredential, str]) -> None:
    state, _, token = switched
    revoked = AgentCredential(revoked=True)
    for own in (_own(token), None):
        refused = run(state, heartbeat_msg(2, capabilities=CAPS), record=revoked, own=own)
        assert refused.forbidden and refused.refusal == credentials.REVOKED


def test_without_agent_keys_no_credential_rule_applies(
    switched: tuple[AgentState, AgentCredential, str],
) -> None:
    state, record, _ = switched
    anonymous = run(state, heartbeat_msg(2, capabilities=CAPS), record=record, key_id=None)
    assert not anonymous.forbidden


def test_an_agent_on_its_own_credential_keeps_its_uid(
    switched: tuple[AgentState, AgentCredential, str],
) -> None:
    state, record, token = switched
    move = pb.AgentToServer(
        instance_uid=UID, sequence_num=2, capabilities=CAPS, flags=caps.REQUEST_INSTANCE_UID
    )
    refused = run(state, move, record=record, own=_own(token))
    assert refused.rejected
    assert "keeps its instance_uid" in refused.reply.error_response.error_message


def test_an_agent_still_on_the_shared_key_that_moves_gets_a_credential_for_its_new_uid() -> None:
    outcome, _ = _enrolled()
    assert outcome.state is not None and outcome.credential is not None
    pending = outcome.credential.new
    new_uid = bytes(range(100, 116))
    move = pb.AgentToServer(
        instance_uid=UID, sequence_num=1, capabilities=CAPS, flags=caps.REQUEST_INSTANCE_UID
    )
    mints = Mints()
    moved = handle(
        outcome.state,
        move,
        PER_AGENT,
        NOW,
        lambda: new_uid,
        key_id=KEY,
        credential=pending,
        mint_credential=mints,
    )
    assert moved.state is not None and moved.state.instance_uid == new_uid
    # Its old uid's record stays behind with the old row: the new uid starts from none.
    [minted] = mints.made
    assert minted.token.startswith(f"oagc1.{new_uid.hex()}.")
    assert moved.credential is not None and moved.credential.expected is None
    assert moved.credential.new is not None and moved.credential.new.pending == minted.digest


# -- rotation ---------------------------------------------------------------------------------------


def test_rotation_mints_a_new_one_and_the_old_is_refused_once_the_new_is_used(
    switched: tuple[AgentState, AgentCredential, str],
) -> None:
    state, record, old = switched
    mints = Mints()
    asked = replace(record, rotate=True)
    rotated = run(state, heartbeat_msg(2, capabilities=CAPS), record=asked, own=_own(old), mint=mints)
    new = mints.made[-1].token
    assert _token_in(rotated.reply.connection_settings) == new
    assert rotated.credential is not None and rotated.credential.expected == asked
    after = rotated.credential.new
    assert after is not None and not after.rotate
    # Both are accepted until the new one is used.
    assert after.active == record.active and after.pending == credentials.digest_of(new)
    assert after.accepts(credentials.digest_of(old)) and after.accepts(credentials.digest_of(new))
    assert rotated.state is not None
    still = run(rotated.state, heartbeat_msg(3, capabilities=CAPS), record=after, own=_own(old))
    assert not still.forbidden and still.credential is None
    assert still.state is not None
    used = run(still.state, heartbeat_msg(4, capabilities=CAPS), record=after, own=_own(new))
    assert used.credential is not None and used.credential.new is not None
    final = used.credential.new
    assert final.active == credentials.digest_of(new) and final.pending is None
    refused = run(still.state, heartbeat_msg(4, capabilities=CAPS), record=final, own=_own(old))
    assert refused.forbidden and refused.refusal == credentials.CREDENTIAL_REFUSED


def _applied(seq: int, hash_: bytes, status: int = pb.ConnectionSettingsStatuses_APPLIED) -> pb.AgentToServer:
    msg = heartbeat_msg(seq, capabilities=CAPS)
    msg.connection_settings_status.last_connection_settings_hash = hash_
    msg.connection_settings_status.status = status  # type: ignore[assignment]
    return msg


def test_an_applied_report_of_the_offer_that_carried_it_activates_it(
    switched: tuple[AgentState, AgentCredential, str],
) -> None:
    state, record, old = switched
    mints = Mints()
    rotated = run(
        state,
        heartbeat_msg(2, capabilities=CAPS),
        record=replace(record, rotate=True),
        own=_own(old),
        mint=mints,
    )
    assert rotated.state is not None and rotated.credential is not None
    pending = rotated.credential.new
    offer_hash = rotated.reply.connection_settings.hash
    # Still on the old credential, the agent says it applied the new settings: the old one is done.
    report = run(rotated.state, _applied(3, offer_hash), record=pending, own=_own(old))
    assert report.credential is not None and report.credential.new is not None
    assert report.credential.new.active == credentials.digest_of(mints.made[0].token)
    assert not report.credential.new.accepts(credentials.digest_of(old))
    assert not report.reply.HasField("connection_settings")


@pytest.mark.parametrize(
    "status",
    [pb.ConnectionSettingsStatuses_FAILED, pb.ConnectionSettingsStatuses_APPLYING],
    ids=["failed", "applying"],
)
def test_a_failed_or_applying_report_mints_nothing(
    switched: tuple[AgentState, AgentCredential, str], status: int
) -> None:
    state, record, old = switched
    mints = Mints()
    rotated = run(
        state,
        heartbeat_msg(2, capabilities=CAPS),
        record=replace(record, rotate=True),
        own=_own(old),
        mint=mints,
    )
    assert rotated.state is not None and rotated.credential is not None
    report = run(
        rotated.state, _applied(3, b"\x01" * 32, status), record=rotated.credential.new, own=_own(old)
    )
    assert report.credential is None and len(mints.made) == 1
    assert not report.reply.HasField("connection_settings")


def test_a_pending_credential_reported_missing_is_minted_anew() -> None:
    outcome, _ = _enrolled()
    assert outcome.state is not None and outcome.credential is not None
    # The agent reports settings other than the offer (a lost reply): it lacks its credential.
    mints = Mints()
    report = run(outcome.state, _applied(1, b"\x02" * 32), record=outcome.credential.new, mint=mints)
    [minted] = mints.made
    assert _token_in(report.reply.connection_settings) == minted.token
    assert report.credential is not None and report.credential.new is not None
    assert report.credential.new.pending == minted.digest


def test_other_parts_changed_leave_the_held_opamp_settings_out(
    switched: tuple[AgentState, AgentCredential, str],
) -> None:
    state, record, token = switched
    fleet = _fleet(_metrics_settings())
    changed = run(state, heartbeat_msg(2, capabilities=CAPS), fleet, record=record, own=_own(token))
    offer = changed.reply.connection_settings
    assert offer.own_metrics.destination_endpoint == "https://otlp.example.com/v1/metrics"
    assert not offer.HasField("opamp") and changed.credential is None
    # Its hash still covers the opamp part the agent holds.
    assert offer.hash == fleet.settings.credential_offer_for(state, record.active).offer.hash  # type: ignore[arg-type]


def test_another_public_url_needs_a_new_credential(switched: tuple[AgentState, AgentCredential, str]) -> None:
    state, record, token = switched
    mints = Mints()
    moved = run(
        state,
        heartbeat_msg(2, capabilities=CAPS),
        _fleet(endpoint="wss://new.example.com/v1/opamp"),
        record=record,
        own=_own(token),
        mint=mints,
    )
    [minted] = mints.made
    assert moved.reply.connection_settings.opamp.destination_endpoint == "wss://new.example.com/v1/opamp"
    assert _token_in(moved.reply.connection_settings) == minted.token
    assert moved.credential is not None and moved.credential.new is not None
    assert moved.credential.new.active == record.active


def test_back_on_shared_credentials_an_agent_on_its_own_gets_no_opamp_part(
    switched: tuple[AgentState, AgentCredential, str],
) -> None:
    state, record, token = switched
    outcome = run(state, heartbeat_msg(2, capabilities=CAPS), SHARED, record=record, own=_own(token))
    # The heartbeat offer alone would replace the settings that carry its credential.
    assert not outcome.reply.connection_settings.HasField("opamp")
    assert not outcome.forbidden and outcome.credential is None


# -- pushes ---------------------------------------------------------------------------------------


def test_a_push_mints_for_a_rotation_and_says_what_to_store_first(
    switched: tuple[AgentState, AgentCredential, str],
) -> None:
    state, record, _ = switched
    asked = replace(record, rotate=True)
    assert config_due(state, PER_AGENT, NOW, asked)
    assert not config_due(state, PER_AGENT, NOW, record)
    mints = Mints()
    push = config_push(state, PER_AGENT, NOW, asked, mints)
    assert push is not None and push.durable and push.credential is not None
    assert push.credential.expected == asked and push.credential.new is not None
    assert push.credential.new.pending == mints.made[0].digest
    assert _token_in(push.reply.connection_settings) == mints.made[0].token
    assert push.state.offered_settings_hash == push.reply.connection_settings.hash


# -- records and credentials ----------------------------------------------------------------------


def test_the_record_holds_no_secret_and_round_trips(
    switched: tuple[AgentState, AgentCredential, str],
) -> None:
    _, record, token = switched
    secret = token.rsplit(".", 1)[1]
    for text in (record.encode(), repr(record), str(record.to_json())):
        assert secret not in text
    assert AgentCredential.decode(record.encode()) == record
    assert AgentCredential.from_json(record.to_json()) == record
    minted = credentials.mint(UID)
    assert minted.token not in repr(minted)


def test_real_credentials_parse_and_others_do_not() -> None:
    minted = credentials.mint(UID)
    own = credentials.parse(minted.token)
    assert own == OwnCredential(UID, minted.digest)
    assert credentials.mint(UID).token != minted.token
    head, uid_hex, secret = minted.token.split(".")
    for bad in (
        "",
        "agent-key",
        f"{head}.{uid_hex}",
        f"{head}.{uid_hex}.{secret}.x",
        f"oagc2.{uid_hex}.{secret}",
        f"{head}.{uid_hex.upper()}.{secret}",
        f"{head}.{uid_hex[:-1]}.{secret}",
        f"{head}.{uid_hex}.{secret[:-1]}",
        f"{head}.{uid_hex}.{secret[:-1]}=",
    ):
        assert credentials.parse(bad) is None, bad


@pytest.mark.parametrize("text", ["[]", '{"active": 3}', '{"active": "zz"}', "{nope"])
def test_an_unreadable_record_is_an_error(text: str) -> None:
    with pytest.raises(credentials.BadCredentialRecord):
        AgentCredential.decode(text)


# -- the fast path agrees with the full rules ------------------------------------------------------


def _records() -> st.SearchStrategy[AgentCredential | None]:
    digest = st.binary(min_size=32, max_size=32)
    return st.one_of(
        st.none(),
        st.builds(
            AgentCredential,
            active=st.one_of(st.none(), digest),
            pending=st.one_of(st.none(), digest),
            opamp_hash=st.one_of(st.none(), digest),
            rotate=st.booleans(),
            revoked=st.booleans(),
        ),
    )


@settings(max_examples=400, deadline=None)
@given(
    record=_records(),
    capabilities=st.sampled_from([CAPS, caps.REPORTS_STATUS | HEARTBEATS, caps.REPORTS_STATUS | ACCEPTS]),
    fleet=st.sampled_from([PER_AGENT, SHARED, _fleet(_metrics_settings())]),
    offered=st.one_of(st.none(), st.binary(min_size=32, max_size=32)),
)
def test_fast_and_full_rules_agree_with_credentials(
    record: AgentCredential | None, capabilities: int, fleet: FleetView, offered: bytes | None
) -> None:
    state = AgentState(
        instance_uid=UID,
        enrolled_at=NOW - 100,
        last_seen=NOW - 30,
        sequence_num=7,
        capabilities=capabilities,
        description=description().SerializeToString(),
        offered_settings_hash=offered,
        key_id=KEY,
    )
    msg = heartbeat_msg(8, capabilities=capabilities)
    if credentials.refusal(record, None, UID, True):
        assert run(state, msg, fleet, record=record).forbidden
        return
    fast = engine._heartbeat(state, msg, fleet, NOW, record)
    full = run(state, msg, fleet, record=record, mint=Mints())
    if fast is not None:
        assert (fast.reply, fast.write, fast.state, fast.credential) == (
            full.reply,
            full.write,
            full.state,
            None,
        )
        assert full.credential is None
    due = fleet.settings.offers_any and credential_offers.due(state, record, fleet.settings)
    assert due == full.reply.HasField("connection_settings")
