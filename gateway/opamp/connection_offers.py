"""The ConnectionSettingsOffers each agent gets: the heartbeat `opamp` part and the operator's settings.

Pure. One offer per agent combines, each only for an agent with its capability (spec 5):

- `opamp` (the heartbeat interval, gateway/opamp/heartbeat.py): ReportsHeartbeat and
  AcceptsOpAMPConnectionSettings;
- `own_metrics`, `own_traces`, `own_logs`: ReportsOwnMetrics, ReportsOwnTraces, ReportsOwnLogs;
- `other_connections`: AcceptsOtherConnectionSettings;

the parts resolved from the connection settings whose selector matches the agent (priority, then
name; the first that carries a part gives it: gateway/fleet/connection_settings.py). Its `hash` is
SHA-256 over the offer's deterministic encoding, so it changes exactly when a part the agent gets
does, and equal offers hash equal on every node. An offer of the `opamp` part alone is the
heartbeat offer itself (same hash as before connection settings existed). heartbeat.py decides
when it is due: once per hash, again when the agent reports another hash.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.fleet.agent import AgentState, facts
from gateway.fleet.connection_settings import Connection, ConnectionSettings
from gateway.fleet.desired import CACHE_BYTES
from gateway.opamp import capabilities as caps, heartbeat
from gateway.proto import opamp_pb2 as pb

# Versions the hash's input (distinct from heartbeat.py's, which hashes the opamp part alone).
_HASH_DOMAIN = b"opamp-gateway/connection-settings-offers/v1\n"
# ... and the hash of a per-agent credential offer's `opamp` part alone.
_OPAMP_HASH_DOMAIN = b"opamp-gateway/credential-opamp-settings/v1\n"
AUTHORIZATION = "Authorization"
# The capability each telemetry part needs.
TELEMETRY_CAPABILITY: dict[str, int] = {
    "own_metrics": pb.AgentCapabilities_ReportsOwnMetrics,
    "own_traces": pb.AgentCapabilities_ReportsOwnTraces,
    "own_logs": pb.AgentCapabilities_ReportsOwnLogs,
}
ACCEPTS_OTHER = pb.AgentCapabilities_AcceptsOtherConnectionSettings
# Every capability bit that can make an agent's offer differ.
_RELEVANT = heartbeat.NEEDED | ACCEPTS_OTHER | sum(TELEMETRY_CAPABILITY.values())
# Offers remembered per (uid, description, capabilities) in one SettingsSet; a new set starts empty.
_CACHE_LIMIT = 1 << 16


@dataclass(frozen=True, slots=True)
class Parts:
    """The settings an agent's selectors give it, before its capabilities are applied."""

    telemetry: tuple[tuple[str, Connection], ...] = ()
    other_connections: tuple[tuple[str, Connection], ...] = ()


def _fill(message: pb.TelemetryConnectionSettings | pb.OtherConnectionSettings, c: Connection) -> None:
    message.destination_endpoint = c.destination_endpoint
    for key, value in c.headers:
        message.headers.headers.add(key=key, value=value)
    if c.tls is not None:
        message.tls.ca_pem_contents = c.tls.ca_pem_contents
        message.tls.include_system_ca_certs_pool = c.tls.include_system_ca_certs_pool
        message.tls.insecure_skip_verify = c.tls.insecure_skip_verify
        message.tls.min_version = c.tls.min_version
        message.tls.max_version = c.tls.max_version
        message.tls.SetInParent()
    if isinstance(message, pb.OtherConnectionSettings):
        message.other_settings.update(dict(c.other_settings))


def resolve(settings: tuple[ConnectionSettings, ...], uid: bytes, attributes: Mapping[str, str]) -> Parts:
    """The parts for an agent: `settings` in resolution order (priority, then name)."""
    telemetry: dict[str, Connection] = {}
    others: dict[str, Connection] = {}
    for s in settings:
        if not s.spec.selector.matches(uid, attributes):
            continue
        for kind in TELEMETRY_CAPABILITY:
            connection = s.spec.telemetry(kind)
            if connection is not None:
                telemetry.setdefault(kind, connection)
        for name, connection in s.spec.other_connections:
            others.setdefault(name, connection)
    return Parts(tuple(sorted(telemetry.items())), tuple(sorted(others.items())))


def add_parts(offer: pb.ConnectionSettingsOffers, parts: Parts, capabilities: int) -> bool:
    """Fill `offer` with the parts an agent with `capabilities` may get; whether there was any."""
    added = False
    for kind, connection in parts.telemetry:
        if capabilities & TELEMETRY_CAPABILITY[kind]:
            _fill(getattr(offer, kind), connection)
            added = True
    if capabilities & ACCEPTS_OTHER:
        for name, connection in parts.other_connections:
            _fill(offer.other_connections[name], connection)
            added = True
    return added


def hashed(offer: pb.ConnectionSettingsOffers) -> pb.ConnectionSettingsOffers:
    """`offer` with its `hash`: SHA-256 over its deterministic encoding (hash unset)."""
    offer.hash = hashlib.sha256(_HASH_DOMAIN + offer.SerializeToString(deterministic=True)).digest()
    return offer


def build_offer(
    parts: Parts, capabilities: int, heartbeat_offer: pb.ConnectionSettingsOffers | None
) -> pb.ConnectionSettingsOffers | None:
    """The offer for an agent with `capabilities` (None: nothing it may be offered)."""
    offer = pb.ConnectionSettingsOffers()
    if heartbeat_offer is not None and capabilities & heartbeat.NEEDED == heartbeat.NEEDED:
        offer.opamp.CopyFrom(heartbeat_offer.opamp)
    if not add_parts(offer, parts, capabilities):
        return heartbeat_offer if offer.HasField("opamp") else None
    return hashed(offer)


@dataclass(frozen=True, slots=True)
class CredentialOffer:
    """The offer for an agent on per-agent credentials, in reference form: its `opamp` part names the
    credential by its digest (`Authorization: Bearer sha256:<hex>`), never by the secret, so the
    offer and its `hash` are the same on every node and at every message, and nothing secret is
    cached. gateway/opamp/credential_offers.py puts the secret in (or leaves the part out) when it
    sends one."""

    offer: pb.ConnectionSettingsOffers
    # SHA-256 of the reference-form `opamp` part alone: what AgentCredential.opamp_hash remembers.
    opamp_hash: bytes


def reference(digest: bytes) -> str:
    """The Authorization value a reference-form offer carries in place of a credential."""
    return "Bearer sha256:" + digest.hex()


def build_credential_offer(
    parts: Parts,
    capabilities: int,
    endpoint: str,
    heartbeat_offer: pb.ConnectionSettingsOffers | None,
    digest: bytes,
) -> CredentialOffer:
    """The reference-form offer for an agent whose newest credential has `digest`: `opamp` with the
    public endpoint, the credential's reference and (ReportsHeartbeat) the heartbeat interval, plus
    the operator's parts by capability; one hash over all of it."""
    offer = pb.ConnectionSettingsOffers()
    offer.opamp.destination_endpoint = endpoint
    offer.opamp.headers.headers.add(key=AUTHORIZATION, value=reference(digest))
    if heartbeat_offer is not None and capabilities & caps.REPORTS_HEARTBEAT:
        offer.opamp.heartbeat_interval_seconds = heartbeat_offer.opamp.heartbeat_interval_seconds
    opamp_hash = hashlib.sha256(
        _OPAMP_HASH_DOMAIN + offer.opamp.SerializeToString(deterministic=True)
    ).digest()
    add_parts(offer, parts, capabilities)
    return CredentialOffer(hashed(offer), opamp_hash)


@dataclass(eq=False)
class SettingsSet:
    """An immutable snapshot of the fleet's connection settings and the heartbeat offer, with a
    per-agent offer cache (a heartbeat costs a dict lookup)."""

    settings: tuple[ConnectionSettings, ...] = ()
    heartbeat_offer: pb.ConnectionSettingsOffers | None = None
    # --public-opamp-url with --agent-credentials per-agent ("": per-agent credentials are off).
    credential_endpoint: str = ""
    # Identifies the snapshot's settings: equal on two nodes that know the same versions.
    generation: str = field(init=False)
    _cache: dict[tuple[bytes, bytes | None, int], pb.ConnectionSettingsOffers | None] = field(
        init=False, repr=False
    )
    _credential_cache: dict[tuple[bytes, bytes | None, int, bytes], CredentialOffer] = field(
        init=False, repr=False
    )
    _cache_bytes: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.settings = tuple(sorted(self.settings, key=lambda s: (-s.spec.priority, s.name)))
        token = hashlib.sha256()
        for s in self.settings:
            token.update(f"{s.name}\0{s.hash}\0".encode())
        self.generation = token.hexdigest()
        self._cache = {}
        self._credential_cache = {}
        self._cache_bytes = 0

    @property
    def offers_any(self) -> bool:
        """Whether any agent may be offered settings (the server's OffersConnectionSettings)."""
        return self.heartbeat_offer is not None or bool(self.settings) or bool(self.credential_endpoint)

    def _parts(self, state: AgentState, capabilities: int) -> Parts:
        if not self.settings or not capabilities & ~heartbeat.NEEDED:
            return Parts()
        return resolve(self.settings, state.instance_uid, facts(state).attributes)

    def _remember(self, state: AgentState) -> None:
        """Account for one more cache entry of `state`'s agent (clears both caches when full)."""
        # The keys are the agents' bytes: bound them, not only their count.
        cost = len(state.instance_uid) + len(state.description or b"") + 200
        if (
            len(self._cache) + len(self._credential_cache) >= _CACHE_LIMIT
            or self._cache_bytes + cost > CACHE_BYTES
        ):
            self._cache.clear()
            self._credential_cache.clear()
            self._cache_bytes = 0
        self._cache_bytes += cost

    def credential_offer_for(self, state: AgentState, digest: bytes) -> CredentialOffer:
        """The reference-form offer for an agent on per-agent credentials whose newest credential has
        `digest` (gateway/opamp/credential_offers.py decides when)."""
        capabilities = state.capabilities & _RELEVANT
        key = (state.instance_uid, state.description, capabilities, digest)
        found = self._credential_cache.get(key)
        if found is not None:
            return found
        offer = build_credential_offer(
            self._parts(state, capabilities),
            capabilities,
            self.credential_endpoint,
            self.heartbeat_offer,
            digest,
        )
        self._remember(state)
        self._credential_cache[key] = offer
        return offer

    def offer_without_opamp(self, state: AgentState) -> pb.ConnectionSettingsOffers | None:
        """The offer for an agent on its own credential that may not be offered `opamp` settings
        now (per-agent credentials were turned off, or it no longer accepts them): the operator's
        parts alone, so the settings that carry its credential are left as they are (spec: an unset
        `opamp` means unchanged)."""
        capabilities = state.capabilities & _RELEVANT
        return build_offer(self._parts(state, capabilities), capabilities, None)

    def sources_for(self, state: AgentState) -> dict[str, Any] | None:
        """Which stored connection settings give each part of the agent's offer, by name: the
        `own_*` parts and each of `other_connections` the agent's capabilities take (None: no
        connection settings are stored). For the admin API; not on the message path."""
        if not self.settings:
            return None
        attributes = facts(state).attributes
        telemetry: dict[str, str] = {}
        others: dict[str, str] = {}
        for s in self.settings:
            if not s.spec.selector.matches(state.instance_uid, attributes):
                continue
            for kind, bit in TELEMETRY_CAPABILITY.items():
                if state.capabilities & bit and s.spec.telemetry(kind) is not None:
                    telemetry.setdefault(kind, s.name)
            if state.capabilities & ACCEPTS_OTHER:
                for name, _ in s.spec.other_connections:
                    others.setdefault(name, s.name)
        return {**dict(sorted(telemetry.items())), "other_connections": dict(sorted(others.items()))}

    def offer_for(self, state: AgentState) -> pb.ConnectionSettingsOffers | None:
        capabilities = state.capabilities & _RELEVANT
        if not self.settings or not capabilities & ~heartbeat.NEEDED:
            # Nothing but the heartbeat part can apply: no resolution, no allocation (every
            # heartbeat of the fleet asks this).
            return self.heartbeat_offer if capabilities & heartbeat.NEEDED == heartbeat.NEEDED else None
        key = (state.instance_uid, state.description, capabilities)
        try:
            return self._cache[key]
        except KeyError:
            pass
        parts = resolve(self.settings, state.instance_uid, facts(state).attributes)
        offer = build_offer(parts, capabilities, self.heartbeat_offer)
        self._remember(state)
        self._cache[key] = offer
        return offer
