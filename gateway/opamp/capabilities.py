"""Bit values of the OpAMP flag and capability bitmasks, and their human names."""

from __future__ import annotations

from gateway.proto import opamp_pb2 as pb

# AgentToServer.flags
REQUEST_INSTANCE_UID = pb.AgentToServerFlags_RequestInstanceUid

# ServerToAgent.flags
REPORT_FULL_STATE = pb.ServerToAgentFlags_ReportFullState
REPORT_AVAILABLE_COMPONENTS = pb.ServerToAgentFlags_ReportAvailableComponents

# AgentCapabilities bits the engine consults.
REPORTS_STATUS = pb.AgentCapabilities_ReportsStatus
ACCEPTS_REMOTE_CONFIG = pb.AgentCapabilities_AcceptsRemoteConfig
REPORTS_EFFECTIVE_CONFIG = pb.AgentCapabilities_ReportsEffectiveConfig
ACCEPTS_RESTART_COMMAND = pb.AgentCapabilities_AcceptsRestartCommand
REPORTS_HEALTH = pb.AgentCapabilities_ReportsHealth
REPORTS_REMOTE_CONFIG = pb.AgentCapabilities_ReportsRemoteConfig
REPORTS_HEARTBEAT = pb.AgentCapabilities_ReportsHeartbeat
REPORTS_AVAILABLE_COMPONENTS = pb.AgentCapabilities_ReportsAvailableComponents
ACCEPTS_OPAMP_CONNECTION_SETTINGS = pb.AgentCapabilities_AcceptsOpAMPConnectionSettings
REPORTS_CONNECTION_SETTINGS_STATUS = pb.AgentCapabilities_ReportsConnectionSettingsStatus
ACCEPTS_PACKAGES = pb.AgentCapabilities_AcceptsPackages
REPORTS_PACKAGE_STATUSES = pb.AgentCapabilities_ReportsPackageStatuses

_AGENT_PREFIX = "AgentCapabilities_"
_SERVER_PREFIX = "ServerCapabilities_"


def _names(enum_name: str, prefix: str) -> dict[int, str]:
    enum = pb.DESCRIPTOR.enum_types_by_name[enum_name]
    return {v.number: v.name.removeprefix(prefix) for v in enum.values if v.number != 0}


AGENT_CAPABILITY_NAMES: dict[int, str] = _names("AgentCapabilities", _AGENT_PREFIX)
SERVER_CAPABILITY_NAMES: dict[int, str] = _names("ServerCapabilities", _SERVER_PREFIX)

# Only what this gateway really implements; every other bit stays 0 (spec: undefined bits MUST be 0).
SERVER_CAPABILITIES = (
    pb.ServerCapabilities_AcceptsStatus
    | pb.ServerCapabilities_OffersRemoteConfig
    | pb.ServerCapabilities_AcceptsEffectiveConfig
    | pb.ServerCapabilities_OffersPackages
    | pb.ServerCapabilities_AcceptsPackagesStatus
)
# ... and with a heartbeat interval to offer (gateway/opamp/heartbeat.py): connection settings.
OFFERS_CONNECTION_SETTINGS = pb.ServerCapabilities_OffersConnectionSettings


def server_capabilities(offers_settings: bool) -> int:
    """The ServerCapabilities this gateway sends: OffersConnectionSettings only while it offers some."""
    return SERVER_CAPABILITIES | (OFFERS_CONNECTION_SETTINGS if offers_settings else 0)


def capability_names(mask: int, names: dict[int, str] = AGENT_CAPABILITY_NAMES) -> list[str]:
    """Sorted names of the known bits set in `mask`; unknown bits are reported as `Bit0x...`."""
    out = [name for bit, name in names.items() if mask & bit]
    known = 0
    for bit in names:
        known |= bit
    unknown = mask & ~known
    bit = 1
    while unknown >= bit:
        if unknown & bit:
            out.append(f"Bit{bit:#x}")
        bit <<= 1
    return sorted(out)
