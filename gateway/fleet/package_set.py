"""Which packages each agent should have, given the packages a node currently knows, and their hashes.

Resolution, as for config files (desired.py): take every package whose selector matches the agent, in
order of priority (highest first) then name (a-z); for each `package_name` the first one wins. The
result is one PackagesAvailable: the winners under their package names, each with its `hash`, and
`all_packages_hash` over them all. No matching package means no desired packages (None).

Hashes (docs/packages.md shows the encodings), deterministic and the same on every node:

- a package's `hash` (PackageAvailable.hash) is SHA-256 over a domain line and, each as an 8-byte
  big-endian length and the bytes: its type (`top_level`/`addon`), version, download URL, content
  hash, signature, then each header's name and value in name order. It changes exactly when
  anything the agent is sent about the package does (the content hash stands for the file's bytes).
- `all_packages_hash` is SHA-256 over another domain line and, for each package in name order, its
  name and its hash, framed the same way. The empty set has a hash too (EMPTY_ALL_PACKAGES_HASH):
  it is what an agent is offered when the packages it got no longer apply to it (agents delete
  packages the server no longer offers, spec).

A package in a staged rollout (waves.py) takes part for each agent as the revision its wave says,
as configs do: the new one inside the rollout's cutoff, the previous one (or none) outside it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from gateway.fleet.agent import AgentState, facts
from gateway.fleet.bounded_cache import BoundedCache
from gateway.fleet.desired import CACHE_BYTES, RolloutView
from gateway.fleet.packages import PACKAGE_TYPES, Package
from gateway.fleet.waves import wants_new_version
from gateway.proto import opamp_pb2 as pb

_PACKAGE_DOMAIN = b"opamp-gateway/package/v1\n"
_ALL_DOMAIN = b"opamp-gateway/all-packages/v1\n"
_CACHE_LIMIT = 1 << 18


def _framed(parts: Iterable[bytes]) -> bytes:
    """Each part as an 8-byte big-endian length and its bytes."""
    return b"".join(len(part).to_bytes(8, "big") + part for part in parts)


def package_hash(package: Package) -> bytes:
    """PackageAvailable.hash of a package (its current spec)."""
    spec, f = package.spec, package.spec.file
    parts = [
        spec.type.encode(),
        spec.package_version.encode(),
        f.download_url.encode(),
        f.content_hash,
        f.signature,
    ]
    for name, value in f.headers:
        parts += [name.encode(), value.encode()]
    return hashlib.sha256(_PACKAGE_DOMAIN + _framed(parts)).digest()


def all_packages_hash(hashes: Iterable[tuple[str, bytes]]) -> bytes:
    """all_packages_hash of (package name, package hash) pairs."""
    encoded = b"".join(_framed((name.encode(), value)) for name, value in sorted(hashes))
    return hashlib.sha256(_ALL_DOMAIN + encoded).digest()


EMPTY_ALL_PACKAGES_HASH = all_packages_hash(())


def available(package: Package, hash_: bytes) -> pb.PackageAvailable:
    spec, f = package.spec, package.spec.file
    offer = pb.PackageAvailable(type=PACKAGE_TYPES[spec.type], version=spec.package_version, hash=hash_)  # type: ignore[arg-type]
    offer.file.download_url = f.download_url
    offer.file.content_hash = f.content_hash
    offer.file.signature = f.signature
    for name, value in f.headers:
        offer.file.headers.headers.add(key=name, value=value)
    return offer


@dataclass(frozen=True, slots=True)
class DesiredPackage:
    """One package an agent should have: under which name, from which stored package and revision."""

    package_name: str
    source: str
    revision: int
    package_version: str
    hash: bytes


@dataclass(frozen=True, slots=True)
class DesiredPackages:
    """The packages one agent should have."""

    # all_packages_hash
    hash: bytes
    # Ready to CopyFrom into a ServerToAgent; shared by every agent with the same packages.
    message: pb.PackagesAvailable
    # By package name.
    packages: tuple[DesiredPackage, ...]

    def get(self, package_name: str) -> DesiredPackage | None:
        return next((p for p in self.packages if p.package_name == package_name), None)


def _empty() -> DesiredPackages:
    return DesiredPackages(
        EMPTY_ALL_PACKAGES_HASH, pb.PackagesAvailable(all_packages_hash=EMPTY_ALL_PACKAGES_HASH), ()
    )


# The offer that tells an agent none of the packages it got applies any more.
NO_PACKAGES = _empty()


@dataclass(eq=False)
class PackageSet:
    """An immutable snapshot of the fleet's packages, with a per-agent resolution cache."""

    packages: tuple[Package, ...] = ()
    # Package name -> its rollout; ignored unless it rolls out the package's current revision.
    rollouts: Mapping[str, RolloutView[Package]] = field(default_factory=dict)
    # Identifies the snapshot's content: equal on two nodes that know the same revisions.
    generation: str = field(init=False)
    _staged: dict[str, RolloutView[Package]] = field(init=False, repr=False)
    _hashes: dict[str, bytes] = field(init=False, repr=False)
    _by_match: dict[tuple[tuple[int, bool], ...], DesiredPackages | None] = field(init=False, repr=False)
    _cache: BoundedCache[tuple[bytes, bytes | None], DesiredPackages | None] = field(init=False, repr=False)
    _reported: BoundedCache[bytes, bytes] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.packages = tuple(sorted(self.packages, key=lambda p: (-p.priority, p.name)))
        self._staged = {
            p.name: view
            for p in self.packages
            if (view := self.rollouts.get(p.name)) is not None and view.version == p.version
        }
        token = hashlib.sha256()
        for p in self.packages:
            token.update(f"{p.name}\0{p.hash}\0".encode())
            if p.name in self._staged:
                token.update(f"rollout\0{self._staged[p.name].token()}\0".encode())
        self.generation = token.hexdigest()
        self._hashes = {}
        self._by_match = {}
        self._cache = BoundedCache(_CACHE_LIMIT, CACHE_BYTES)
        self._reported = BoundedCache(_CACHE_LIMIT, CACHE_BYTES)

    def __bool__(self) -> bool:
        return bool(self.packages)

    def by_name(self, name: str) -> Package | None:
        return next((p for p in self.packages if p.name == name), None)

    def hash_of(self, package: Package) -> bytes:
        """The package's PackageAvailable.hash (cached by its spec's digest)."""
        try:
            return self._hashes[package.hash]
        except KeyError:
            value = self._hashes[package.hash] = package_hash(package)
            return value

    def version_for(self, package: Package, uid: bytes) -> tuple[Package | None, bool]:
        """The revision of `package` the agent takes part with, and whether that is the previous one."""
        view = self._staged.get(package.name)
        if view is None or wants_new_version(view.state, uid, view.version, view.cutoff):
            return package, False
        return view.previous, True

    def rollout_offers(self, package: Package) -> tuple[tuple[str, bytes], ...]:
        """(package name, hash) of what agents may be offered of `package` now: its current
        revision, and during an unfinished rollout its previous revision."""
        offers = [(package.spec.package_name, self.hash_of(package))]
        view = self._staged.get(package.name)
        if view is not None and view.previous is not None:
            offers.append((view.previous.spec.package_name, self.hash_of(view.previous)))
        return tuple(dict.fromkeys(offers))

    def resolve(self, uid: bytes, attributes: Mapping[str, str]) -> DesiredPackages | None:
        chosen: list[tuple[int, bool, Package]] = []
        for i, p in enumerate(self.packages):
            version, previous = self.version_for(p, uid)
            if version is not None and version.selector.matches(uid, attributes):
                chosen.append((i, previous, version))
        matched = tuple((i, previous) for i, previous, _ in chosen)
        # The result depends only on which packages (and revisions) match: agents alike share it.
        try:
            return self._by_match[matched]
        except KeyError:
            pass
        desired = self._merge([(self.packages[i].name, version) for i, _, version in chosen])
        self._by_match[matched] = desired
        return desired

    def _merge(self, matching: list[tuple[str, Package]]) -> DesiredPackages | None:
        winners: dict[str, DesiredPackage] = {}
        offers: dict[str, pb.PackageAvailable] = {}
        for source, version in matching:
            package_name = version.spec.package_name
            if package_name in winners:
                continue
            hash_ = self.hash_of(version)
            winners[package_name] = DesiredPackage(
                package_name, source, version.version, version.spec.package_version, hash_
            )
            offers[package_name] = available(version, hash_)
        if not winners:
            return None
        all_hash = all_packages_hash((name, p.hash) for name, p in winners.items())
        message = pb.PackagesAvailable(all_packages_hash=all_hash)
        for name, offer in offers.items():
            message.packages[name].CopyFrom(offer)
        return DesiredPackages(all_hash, message, tuple(winners[name] for name in sorted(winners)))

    def desired_for(self, state: AgentState) -> DesiredPackages | None:
        """The agent's desired packages; cached, so a heartbeat costs a dict lookup."""
        if not self.packages:
            return None
        key = (state.instance_uid, state.description)
        try:
            return self._cache.entries[key]
        except KeyError:
            pass
        desired = self.resolve(state.instance_uid, facts(state).attributes)
        return self._cache.put(key, desired, len(state.instance_uid) + len(state.description or b""))

    def reported_hash(self, statuses: bytes) -> bytes:
        """server_provided_all_packages_hash of a serialized PackageStatuses; cached like
        ConfigSet.reported_hash (an agent that accepts packages is asked on every message)."""
        try:
            return self._reported.entries[statuses]
        except KeyError:
            pass
        digest: bytes = pb.PackageStatuses.FromString(statuses).server_provided_all_packages_hash
        return self._reported.put(statuses, digest, len(statuses))
