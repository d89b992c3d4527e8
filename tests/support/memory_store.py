"""A Store that keeps records in memory, every AgentState field included; for transport tests that
must not depend on which columns an on-disk adapter has (yet)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from gateway.fleet.agent import AgentState, AgentWrite
from gateway.fleet.configs import Config, ConfigRequest
from gateway.fleet.connection_settings import ConnectionSettings, SettingsSpec
from gateway.fleet.credentials import AgentCredential, kind_of
from gateway.fleet.packages import Package, PackageRequest, PackageVersion, version_of as package_version_of
from gateway.fleet.rollout_record import Rollout
from gateway.fleet.versions import ConfigVersion, oldest_kept, version_of
from gateway.store.base import (
    MAX_PENDING_COMMANDS,
    AgentPage,
    AgentQuery,
    FleetSummary,
    StoredRollout,
    VersionConflict,
)


class MemoryStore:
    def __init__(self) -> None:
        self.records: dict[bytes, AgentState] = {}
        self.aliases: dict[bytes, bytes] = {}
        self.reads = 0
        self.pending_queries = 0
        self.configs: dict[str, Config] = {}
        self.versions: dict[str, list[ConfigVersion]] = {}
        self.rollouts: dict[str, tuple[Rollout, int]] = {}
        self.connection_settings: dict[str, ConnectionSettings] = {}
        self.packages: dict[str, Package] = {}
        self.package_history: dict[str, list[PackageVersion]] = {}
        self.package_rollouts: dict[str, tuple[Rollout, int]] = {}
        # Credential records by the uid the record lives under; counted reads.
        self.credentials: dict[bytes, AgentCredential] = {}
        self.credential_reads = 0

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def ping(self) -> None:
        pass

    async def get(self, uid: bytes) -> AgentState | None:
        self.reads += 1
        return self.records.get(self.aliases.get(uid, uid))

    async def write(self, writes: Sequence[AgentWrite]) -> None:
        """The semantics proposed for every adapter: `pending_command` is set or cleared only by a
        write that names it in `changed`, whatever its `last_seen` (an admin request on one node must
        not be undone by a heartbeat flushed by another); `key_id` likewise; the rest of the record
        never moves back in time."""
        for write in writes:
            state = write.state
            stored = self.records.get(state.instance_uid)
            if "pending_command" not in write.changed and stored is not None:
                state = replace(state, pending_command=stored.pending_command)
            if "key_id" not in write.changed and stored is not None:
                state = replace(state, key_id=stored.key_id)
            if stored is not None and stored.last_seen > state.last_seen:
                if "pending_command" in write.changed:
                    stored = replace(stored, pending_command=state.pending_command)
                if "key_id" in write.changed:
                    stored = replace(stored, key_id=state.key_id)
                self.records[state.instance_uid] = stored
                continue
            self.records[state.instance_uid] = state
            if write.previous_uid is not None and write.previous_uid != state.instance_uid:
                self.records.pop(write.previous_uid, None)
                # A record that moves leaves its credential record behind (with its old row).
                self.credentials.pop(write.previous_uid, None)
                self.aliases[write.previous_uid] = state.instance_uid

    async def list_agents(self, query: AgentQuery, now: float, offline_after: float) -> AgentPage:
        agents = sorted(self.records.values(), key=lambda s: s.uid)
        if query.credential is not None:
            agents = [a for a in agents if kind_of(self.credentials.get(a.instance_uid)) == query.credential]
        agents = agents[: query.limit]
        found = {
            a.instance_uid: self.credentials[a.instance_uid]
            for a in agents
            if a.instance_uid in self.credentials
        }
        return AgentPage(agents=agents, next_cursor=None, credentials=found)

    async def get_credentials(self, uids: Sequence[bytes]) -> dict[bytes, AgentCredential]:
        self.credential_reads += 1
        return {uid: self.credentials[uid] for uid in uids if uid in self.credentials}

    async def put_credential(
        self, uid: bytes, expected: AgentCredential | None, new: AgentCredential | None
    ) -> bool:
        if uid not in self.records or self.credentials.get(uid) != expected:
            return False
        if new is None:
            self.credentials.pop(uid, None)
        else:
            self.credentials[uid] = new
        return True

    async def pending_commands(self, limit: int) -> dict[bytes, int]:
        self.pending_queries += 1
        found = [(s.last_seen, s.instance_uid, s.pending_command) for s in self.records.values()]
        newest = sorted(((seen, uid, c) for seen, uid, c in found if c is not None), reverse=True)
        return {uid: command for _, uid, command in newest[: max(0, min(limit, MAX_PENDING_COMMANDS))]}

    async def forget(self, uid: bytes) -> bytes | None:
        target = self.aliases.get(uid, uid)
        if self.records.pop(target, None) is None:
            return None
        self.credentials.pop(target, None)
        self.aliases = {old: new for old, new in self.aliases.items() if new != target}
        return target

    async def forget_unseen(self, before: float, limit: int) -> int:
        old = sorted((s.last_seen, uid) for uid, s in self.records.items() if s.last_seen < before)
        for _, uid in old[: max(0, limit)]:
            await self.forget(uid)
        return min(len(old), max(0, limit))

    async def summary(self, now: float, offline_after: float) -> FleetSummary:
        return FleetSummary(total=len(self.records), by_status={}, by_type_version={}, by_os={})

    async def list_configs(self) -> list[Config]:
        return [self.configs[name] for name in sorted(self.configs)]

    async def list_connection_settings(self) -> list[ConnectionSettings]:
        return [self.connection_settings[name] for name in sorted(self.connection_settings)]

    async def get_connection_settings(self, name: str) -> ConnectionSettings | None:
        return self.connection_settings.get(name)

    async def put_connection_settings(
        self, name: str, spec: SettingsSpec, now: float
    ) -> tuple[ConnectionSettings, bool]:
        current = self.connection_settings.get(name)
        digest = spec.digest()
        if current is not None and current.hash == digest:
            return current, False
        version = 1 if current is None else current.version + 1
        created = now if current is None else current.created_at
        stored = ConnectionSettings(name, spec, version, created, now, digest)
        self.connection_settings[name] = stored
        return stored, True

    async def delete_connection_settings(self, name: str) -> bool:
        return self.connection_settings.pop(name, None) is not None

    async def get_config(self, name: str) -> Config | None:
        return self.configs.get(name)

    async def put_config(self, name: str, request: ConfigRequest, now: float) -> tuple[Config, bool]:
        current = self.configs.get(name)
        have = 0 if current is None else current.version
        if request.expected_version is not None and request.expected_version != have:
            raise VersionConflict(name, request.expected_version, have)
        digest = request.spec.digest()
        if current is not None and current.hash == digest:
            return current, False
        created = now if current is None else current.created_at
        stored = Config(name, request.spec, have + 1, created, now, digest)
        self.configs[name] = stored
        history = [v for v in self.versions.get(name, []) if v.version >= oldest_kept(stored.version)]
        self.versions[name] = [version_of(stored), *history]
        return stored, True

    async def delete_config(self, name: str, expected_version: int | None = None) -> bool:
        current = self.configs.get(name)
        have = 0 if current is None else current.version
        if expected_version is not None and expected_version != have:
            raise VersionConflict(name, expected_version, have)
        self.versions.pop(name, None)
        self.rollouts.pop(name, None)
        return self.configs.pop(name, None) is not None

    async def config_versions(self, name: str) -> list[ConfigVersion]:
        return list(self.versions.get(name, []))

    async def get_rollout(self, name: str) -> StoredRollout | None:
        found = self.rollouts.get(name)
        return None if found is None else StoredRollout(found[0], str(found[1]))

    async def list_rollouts(self) -> list[Rollout]:
        return [self.rollouts[name][0] for name in sorted(self.rollouts)]

    async def put_rollout(self, rollout: Rollout, expected_rev: str | None) -> str | None:
        found = self.rollouts.get(rollout.name)
        current = None if found is None else str(found[1])
        if rollout.name not in self.configs or current != expected_rev:
            return None
        rev = 1 if found is None else found[1] + 1
        self.rollouts[rollout.name] = (rollout, rev)
        return str(rev)

    async def list_packages(self) -> list[Package]:
        return [self.packages[name] for name in sorted(self.packages)]

    async def get_package(self, name: str) -> Package | None:
        return self.packages.get(name)

    async def put_package(self, name: str, request: PackageRequest, now: float) -> tuple[Package, bool]:
        current = self.packages.get(name)
        have = 0 if current is None else current.version
        if request.expected_version is not None and request.expected_version != have:
            raise VersionConflict(name, request.expected_version, have, "package")
        digest = request.spec.digest()
        if current is not None and current.hash == digest:
            return current, False
        created = now if current is None else current.created_at
        stored = Package(name, request.spec, have + 1, created, now, digest)
        self.packages[name] = stored
        history = [v for v in self.package_history.get(name, []) if v.version >= oldest_kept(stored.version)]
        self.package_history[name] = [package_version_of(stored), *history]
        return stored, True

    async def delete_package(self, name: str, expected_version: int | None = None) -> bool:
        current = self.packages.get(name)
        have = 0 if current is None else current.version
        if expected_version is not None and expected_version != have:
            raise VersionConflict(name, expected_version, have, "package")
        self.package_history.pop(name, None)
        self.package_rollouts.pop(name, None)
        return self.packages.pop(name, None) is not None

    async def package_versions(self, name: str) -> list[PackageVersion]:
        return list(self.package_history.get(name, []))

    async def get_package_rollout(self, name: str) -> StoredRollout | None:
        found = self.package_rollouts.get(name)
        return None if found is None else StoredRollout(found[0], str(found[1]))

    async def list_package_rollouts(self) -> list[Rollout]:
        return [self.package_rollouts[name][0] for name in sorted(self.package_rollouts)]

    async def put_package_rollout(self, rollout: Rollout, expected_rev: str | None) -> str | None:
        found = self.package_rollouts.get(rollout.name)
        current = None if found is None else str(found[1])
        if rollout.name not in self.packages or current != expected_rev:
            return None
        rev = 1 if found is None else found[1] + 1
        self.package_rollouts[rollout.name] = (rollout, rev)
        return str(rev)
