"""A Store that keeps records in memory, every AgentState field included; for transport tests that
must not depend on which columns an on-disk adapter has (yet)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from gateway.fleet.agent import AgentState, AgentWrite
from gateway.fleet.configs import Config, ConfigRequest
from gateway.store.base import MAX_PENDING_COMMANDS, AgentPage, AgentQuery, FleetSummary, VersionConflict


class MemoryStore:
    def __init__(self) -> None:
        self.records: dict[bytes, AgentState] = {}
        self.aliases: dict[bytes, bytes] = {}
        self.reads = 0
        self.pending_queries = 0
        self.configs: dict[str, Config] = {}

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
                self.aliases[write.previous_uid] = state.instance_uid

    async def list_agents(self, query: AgentQuery, now: float, offline_after: float) -> AgentPage:
        agents = sorted(self.records.values(), key=lambda s: s.uid)[: query.limit]
        return AgentPage(agents=agents, next_cursor=None)

    async def pending_commands(self, limit: int) -> dict[bytes, int]:
        self.pending_queries += 1
        found = [(s.last_seen, s.instance_uid, s.pending_command) for s in self.records.values()]
        newest = sorted(((seen, uid, c) for seen, uid, c in found if c is not None), reverse=True)
        return {uid: command for _, uid, command in newest[: max(0, min(limit, MAX_PENDING_COMMANDS))]}

    async def summary(self, now: float, offline_after: float) -> FleetSummary:
        return FleetSummary(total=len(self.records), by_status={}, by_type_version={}, by_os={})

    async def list_configs(self) -> list[Config]:
        return [self.configs[name] for name in sorted(self.configs)]

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
        return stored, True

    async def delete_config(self, name: str, expected_version: int | None = None) -> bool:
        current = self.configs.get(name)
        have = 0 if current is None else current.version
        if expected_version is not None and expected_version != have:
            raise VersionConflict(name, expected_version, have)
        return self.configs.pop(name, None) is not None
