"""Where an agent stands with its desired remote config, and counts of that over a config's agents.

An agent's config status, against the desired config this node resolves for it now:
- `applied`: it reported APPLIED for the desired hash;
- `applying`: it reported APPLYING (or UNSET) for the desired hash, or the hash was sent and it has
  not reported on it yet;
- `failed`: it reported FAILED for the desired hash (or for the offer of it, then rolled back);
- `pending`: not yet reported, and not sent yet (an HTTP agent between polls, or a node that has not
  seen the change yet);
- `unsupported`: a config matches, but the agent does not have AcceptsRemoteConfig;
- `none`: no config gives it any file.

Rollout counts are about the fleet that exists: only agents that are connected (not `offline`, not
`disconnected`, as derive_status says) are counted by config status; the others are counted apart
and never hold a rollout back (`applied` can reach `matched`). An agent that comes back is counted
again, with whatever it reports then.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.fleet.agent import AgentState
from gateway.fleet.desired import ConfigSet, Desired
from gateway.fleet.status import derive_status
from gateway.opamp import capabilities as caps
from gateway.proto import opamp_pb2 as pb

ConfigStatus = Literal["applied", "applying", "failed", "pending", "unsupported", "none"]
CONFIG_STATUSES: tuple[ConfigStatus, ...] = (
    "applied",
    "applying",
    "failed",
    "pending",
    "unsupported",
    "none",
)
_REPORTED: dict[int, ConfigStatus] = {
    pb.RemoteConfigStatuses_APPLIED: "applied",
    pb.RemoteConfigStatuses_FAILED: "failed",
    pb.RemoteConfigStatuses_APPLYING: "applying",
    pb.RemoteConfigStatuses_UNSET: "applying",
}


@dataclass(frozen=True, slots=True)
class ConfigSync:
    status: ConfigStatus
    desired: Desired | None
    reported_hash: bytes

    @property
    def in_sync(self) -> bool:
        return self.status == "applied"

    def to_json(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "in_sync": self.in_sync,
            "desired_hash": None if self.desired is None else self.desired.hash.hex(),
            "reported_hash": self.reported_hash.hex() or None,
            "configs": [] if self.desired is None else list(self.desired.sources),
        }


def config_sync(state: AgentState, configs: ConfigSet) -> ConfigSync:
    desired = configs.desired_for(state)
    reported = pb.RemoteConfigStatus()
    if state.remote_config_status is not None:
        reported = pb.RemoteConfigStatus.FromString(state.remote_config_status)
    reported_hash: bytes = reported.last_remote_config_hash
    status: ConfigStatus
    if desired is None:
        status = "none"
    elif not state.capabilities & caps.ACCEPTS_REMOTE_CONFIG:
        status = "unsupported"
    elif reported_hash == desired.hash:
        status = _REPORTED.get(reported.status, "applying")
    elif state.failed_config_hash == desired.hash:
        status = "failed"
    elif state.offered_config_hash == desired.hash:
        status = "applying"
    else:
        status = "pending"
    return ConfigSync(status=status, desired=desired, reported_hash=reported_hash)


def counted(state: AgentState, now: float, offline_after: float) -> bool:
    """Whether a rollout counts the agent by config status: it is neither offline nor disconnected."""
    return derive_status(state, None, now, offline_after) not in ("offline", "disconnected")


@dataclass
class RolloutCounts:
    """A config's connected agents (those its selector matches) by their config status, and apart
    from them the matched agents that are offline or disconnected."""

    matched: int = 0
    by_status: dict[str, int] = field(default_factory=lambda: dict.fromkeys(CONFIG_STATUSES[:-1], 0))
    offline: int = 0
    disconnected: int = 0

    def add(self, sync: ConfigSync, state: AgentState, now: float, offline_after: float) -> None:
        status = derive_status(state, None, now, offline_after)
        if status == "disconnected":
            self.disconnected += 1
            return
        if status == "offline":
            self.offline += 1
            return
        self.matched += 1
        # A matched agent always has a desired config, so never "none".
        self.by_status[sync.status] = self.by_status.get(sync.status, 0) + 1

    def to_json(self) -> dict[str, Any]:
        return {
            "matched": self.matched,
            **self.by_status,
            "offline": self.offline,
            "disconnected": self.disconnected,
        }
