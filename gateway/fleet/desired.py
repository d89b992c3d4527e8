"""What remote config each agent should have, given the configs a node currently knows.

Resolution: take every config whose selector matches the agent, in order of priority (highest
first) then name (a-z). Their files form one AgentConfigMap; when two configs carry a file with the
same name, the first in that order wins. No matching config (or only configs that lose every file)
means no desired config at all: the gateway then sends nothing, never an empty map.

`config_hash` is SHA-256 over a canonical byte encoding of the resolved files, in file-name order:
for each file, its name, content type and body, each as an 8-byte big-endian length and the bytes.
It depends on nothing but the files, so every node computes the same hash for the same content, and
so does anyone checking it by hand (docs/opamp.md shows the encoding).

A config in a staged rollout (waves.py) takes part for each agent as the version its wave says:
the new one for agents inside the rollout's cutoff, the previous one (its selector and files, at the
config's place in the order) for the others; none at all if there is no previous version.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from gateway.fleet.agent import AgentState, facts
from gateway.fleet.bounded_cache import BoundedCache
from gateway.fleet.configs import Config, ConfigFile
from gateway.fleet.waves import RolloutState, wants_new_version
from gateway.proto import opamp_pb2 as pb

# Desired configs remembered per (uid, description) in one ConfigSet; a new set starts empty.
_CACHE_LIMIT = 1 << 18
# Bytes of agent-supplied keys (descriptions, statuses) each cache may hold (bounded_cache.py).
CACHE_BYTES = 64 * 1024 * 1024


def config_hash(files: Iterable[tuple[str, ConfigFile]]) -> bytes:
    digest = hashlib.sha256()
    for name, f in sorted(files, key=lambda item: item[0]):
        for part in (name.encode(), f.content_type.encode(), f.body):
            digest.update(len(part).to_bytes(8, "big"))
            digest.update(part)
    return digest.digest()


@dataclass(frozen=True, slots=True)
class Desired:
    """The remote config one agent should run."""

    hash: bytes
    # Ready to CopyFrom into a ServerToAgent; shared by every agent with the same desired config.
    message: pb.AgentRemoteConfig
    # The configs that contributed at least one file, in resolution order.
    sources: tuple[str, ...]


class _Hashed(Protocol):
    @property
    def hash(self) -> str: ...


Item = TypeVar("Item", bound=_Hashed)


@dataclass(frozen=True, slots=True)
class RolloutView(Generic[Item]):
    """What resolution needs of a config's (or a package's) rollout: which version it rolls out, the
    version agents outside its waves keep (None: there is none), its state and its current cutoff."""

    version: int
    previous: Item | None
    state: RolloutState
    cutoff: float

    def token(self) -> str:
        previous = "" if self.previous is None else self.previous.hash
        return f"{self.version}\0{previous}\0{self.state}\0{self.cutoff!r}"


@dataclass(eq=False)
class ConfigSet:
    """An immutable snapshot of the fleet's configs, with a per-agent resolution cache."""

    configs: tuple[Config, ...] = ()
    # Config name -> its rollout; ignored unless it rolls out the config's current version.
    rollouts: Mapping[str, RolloutView[Config]] = field(default_factory=dict)
    # Identifies the snapshot's content: equal on two nodes that know the same config versions.
    generation: str = field(init=False)
    _cache: BoundedCache[tuple[bytes, bytes | None], Desired | None] = field(init=False, repr=False)
    _shared: dict[bytes, Desired] = field(init=False, repr=False)
    _reported: BoundedCache[bytes, bytes] = field(init=False, repr=False)
    _by_match: dict[tuple[tuple[int, bool], ...], Desired | None] = field(init=False, repr=False)
    _staged: dict[str, RolloutView[Config]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.configs = tuple(sorted(self.configs, key=lambda c: (-c.priority, c.name)))
        self._staged = {
            c.name: view
            for c in self.configs
            if (view := self.rollouts.get(c.name)) is not None and view.version == c.version
        }
        token = hashlib.sha256()
        for c in self.configs:
            token.update(f"{c.name}\0{c.hash}\0".encode())
            if c.name in self._staged:
                token.update(f"rollout\0{self._staged[c.name].token()}\0".encode())
        self.generation = token.hexdigest()
        self._cache = BoundedCache(_CACHE_LIMIT, CACHE_BYTES)
        self._shared = {}
        self._reported = BoundedCache(_CACHE_LIMIT, CACHE_BYTES)
        self._by_match = {}

    def __bool__(self) -> bool:
        return bool(self.configs)

    def by_name(self, name: str) -> Config | None:
        for c in self.configs:
            if c.name == name:
                return c
        return None

    def _version_for(self, c: Config, uid: bytes) -> tuple[Config | None, bool]:
        """The version of `c` the agent takes part with, and whether that is the previous one."""
        view = self._staged.get(c.name)
        if view is None or wants_new_version(view.state, uid, view.version, view.cutoff):
            return c, False
        return view.previous, True

    def resolve(self, uid: bytes, attributes: Mapping[str, str]) -> Desired | None:
        chosen: list[tuple[int, bool, Config]] = []
        for i, c in enumerate(self.configs):
            version, previous = self._version_for(c, uid)
            if version is not None and version.selector.matches(uid, attributes):
                chosen.append((i, previous, version))
        matched = tuple((i, previous) for i, previous, _ in chosen)
        # The result depends only on which configs (and versions) match: agents alike share it, and
        # a config change hashes each distinct combination once, not once per agent.
        try:
            return self._by_match[matched]
        except KeyError:
            pass
        desired = self._merge([version for _, _, version in chosen])
        self._by_match[matched] = desired
        return desired

    def _merge(self, matching: list[Config]) -> Desired | None:
        files: dict[str, ConfigFile] = {}
        sources: list[str] = []
        for c in matching:
            contributed = False
            for name, f in c.spec.files:
                if name not in files:
                    files[name] = f
                    contributed = True
            if contributed:
                sources.append(c.name)
        if not files:
            return None
        digest = config_hash(files.items())
        shared = self._shared.get(digest)
        if shared is not None and shared.sources == tuple(sources):
            return shared
        message = pb.AgentRemoteConfig(config_hash=digest)
        for name, f in files.items():
            entry = message.config.config_map[name]
            entry.body = f.body
            entry.content_type = f.content_type
        desired = Desired(hash=digest, message=message, sources=tuple(sources))
        self._shared.setdefault(digest, desired)
        return desired

    def reported_hash(self, status: bytes) -> bytes:
        """last_remote_config_hash of a serialized RemoteConfigStatus. Cached: every message from an
        agent that accepts remote config compares it with the desired hash, and most agents of a
        fleet report the same few statuses, byte for byte."""
        try:
            return self._reported.entries[status]
        except KeyError:
            pass
        digest: bytes = pb.RemoteConfigStatus.FromString(status).last_remote_config_hash
        return self._reported.put(status, digest, len(status))

    def desired_for(self, state: AgentState) -> Desired | None:
        """The agent's desired config; cached, so a heartbeat costs a dict lookup."""
        if not self.configs:
            return None
        key = (state.instance_uid, state.description)
        try:
            return self._cache.entries[key]
        except KeyError:
            pass
        desired = self.resolve(state.instance_uid, facts(state).attributes)
        return self._cache.put(key, desired, len(state.instance_uid) + len(state.description or b""))
