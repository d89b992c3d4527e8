"""The storage port: what the gateway needs from a place that keeps agent records and configs.

Adapters (sqlite.py for one node or a shared file, elasticsearch.py for any number of nodes)
implement `Store`; tests/store/test_contract.py runs one suite over every adapter. The pagination
cursor both issue is encoded here, so a cursor means the same whichever store answers.
"""

from __future__ import annotations

import base64
import binascii
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from gateway.fleet.agent import AgentState, AgentWrite, uid_str
from gateway.fleet.configs import Config, ConfigRequest
from gateway.fleet.connection_settings import ConnectionSettings, SettingsSpec
from gateway.fleet.credentials import AgentCredential, Kind
from gateway.fleet.packages import Package, PackageRequest, PackageVersion
from gateway.fleet.rollout_record import Rollout
from gateway.fleet.selector import Selector
from gateway.fleet.status import Status
from gateway.fleet.versions import ConfigVersion

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
# The most pending commands one pending_commands() call returns (also Elasticsearch's default
# `index.max_result_window`, the largest page one search may return).
MAX_PENDING_COMMANDS = 10_000
# The most records one forget_unseen() call deletes (a sweep calls again while it gets this many).
MAX_FORGET_BATCH = 10_000
# Bytes of an instance_uid, the only thing a cursor carries.
_UID_LENGTH = 16


class StoreError(Exception):
    """The store could not do what was asked (unreachable, locked past the timeout, corrupt)."""


class StoreUnavailable(StoreError):
    """A transient failure: the caller should shed load and let the agent retry later."""


class VersionConflict(Exception):
    """A config (or package) write that expected another version than the stored one (0: expected
    none stored). A package's version is its revision."""

    def __init__(self, name: str, expected: int, current: int, what: str = "config") -> None:
        unit = "revision" if what == "package" else "version"
        super().__init__(
            f"{what} {name!r} is at {unit} {current}, not {expected}: re-read it and apply your change again"
        )
        self.current = current


class InvalidCursor(ValueError):
    """A pagination cursor that this store did not issue."""


def encode_cursor(uid_text: str) -> str:
    """The opaque cursor after `uid_text`: its 16 uid bytes in unpadded url-safe base64."""
    return base64.urlsafe_b64encode(uuid.UUID(uid_text).bytes).rstrip(b"=").decode("ascii")


def decode_cursor(cursor: str) -> str:
    """The uid_text a cursor from `encode_cursor` stands for; InvalidCursor for anything else."""
    try:
        raw = base64.b64decode(cursor + "==", altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise InvalidCursor(f"invalid cursor: {cursor!r}") from None
    if len(raw) != _UID_LENGTH:
        raise InvalidCursor(f"invalid cursor: {cursor!r}")
    text = uid_str(raw)
    if encode_cursor(text) != cursor:
        raise InvalidCursor(f"invalid cursor: {cursor!r}")
    return text


@dataclass(frozen=True)
class AgentQuery:
    status: Status | None = None
    # Case-insensitive substring over the uid and every attribute value.
    q: str | None = None
    # attribute key -> exact text value; identifying and non-identifying attributes both match.
    attributes: dict[str, str] = field(default_factory=dict)
    # Only agents the selector matches (fleet/selector.py semantics; an empty selector matches none).
    selector: Selector | None = None
    # Only agents bound to this key id ("": agents bound to no key).
    key_id: str | None = None
    # Only agents whose reported package statuses give any of these terms
    # (gateway/fleet/package_status.py package_terms), and only those that give none of these.
    with_package_states: tuple[str, ...] = ()
    without_package_states: tuple[str, ...] = ()
    # Only agents on this kind of credential (gateway/fleet/credentials.py).
    credential: Kind | None = None
    limit: int = DEFAULT_PAGE_SIZE
    # Opaque token from the previous page's `next_cursor`.
    cursor: str | None = None


@dataclass(frozen=True)
class AgentPage:
    agents: list[AgentState]
    next_cursor: str | None
    # The credential records of the listed agents that have one (the others are on shared keys).
    credentials: dict[bytes, AgentCredential] = field(default_factory=dict)


@dataclass(frozen=True)
class FleetSummary:
    total: int
    by_status: dict[str, int]
    # "service.name service.version" pairs, e.g. {"otelcol-contrib": {"0.120.0": 3}}
    by_type_version: dict[str, dict[str, int]]
    by_os: dict[str, int]


@dataclass(frozen=True, slots=True)
class StoredRollout:
    """A rollout record and its revision, the token a compare-and-set of it names."""

    rollout: Rollout
    rev: str


class AgentStore(Protocol):
    """The part of a store the writer needs."""

    async def get(self, uid: bytes) -> AgentState | None: ...

    async def write(self, writes: Sequence[AgentWrite]) -> None: ...


class Store(Protocol):
    async def open(self) -> None:
        """Connect and check the schema; raise StoreError naming what to do if it is unusable."""

    async def close(self) -> None: ...

    async def ping(self) -> None:
        """Raise StoreError if the store cannot serve right now (readiness)."""

    async def get(self, uid: bytes) -> AgentState | None:
        """The record stored under `uid`, or the record `uid` was moved to, or None."""

    async def write(self, writes: Sequence[AgentWrite]) -> None:
        """Apply a batch atomically. A write never moves a record backwards: a write whose
        `last_seen` is older than the stored one is dropped. A write with `previous_uid` deletes
        that row and records it as an alias of the new uid."""

    async def list_agents(self, query: AgentQuery, now: float, offline_after: float) -> AgentPage:
        """Agents matching the query in a stable order, one page at a time."""

    async def get_credentials(self, uids: Sequence[bytes]) -> dict[bytes, AgentCredential]:
        """The credential records (gateway/fleet/credentials.py) of the agents stored under exactly
        these uids (an old, moved uid has none), read through (never an older copy); an agent without
        one (on shared keys) or without a record is left out."""

    async def put_credential(
        self, uid: bytes, expected: AgentCredential | None, new: AgentCredential | None
    ) -> bool:
        """Compare-and-set the credential record of the agent stored under `uid`: written only if its
        record is `expected` now (None: it has none); None clears it. False when it was not written
        (another node changed it first, or there is no such agent): read again and decide again.
        Only this changes a credential record: agent writes (`write`) keep it as it is, and a record
        that moves to another uid (RequestInstanceUid) or is deleted loses it."""

    async def pending_commands(self, limit: int) -> dict[bytes, int]:
        """instance_uid -> stored `pending_command`, for the agents that have one (one query, no
        record is decoded). At most `limit` (clamped to 0..MAX_PENDING_COMMANDS): when more agents have
        one, those seen most recently (highest `last_seen`), i.e. the connected ones rather than
        agents gone for good with a command they will never fetch. Keyed by the uid each record lives
        under now (never an old, moved uid). Elasticsearch answers from the last refreshed view."""

    async def forget(self, uid: bytes) -> bytes | None:
        """Delete the record stored under `uid`, or the record `uid` was moved to, with the aliases
        that lead to it; the uid it was stored under (None: there was none). A later write for that
        uid enrolls it again."""

    async def forget_unseen(self, before: float, limit: int) -> int:
        """Delete the records whose `last_seen` is before `before`, at most `limit` (clamped to
        0..MAX_FORGET_BATCH; which ones when more match is the store's choice); how many were
        deleted. Idempotent and safe to run on several nodes at once: a record already gone is not
        counted, and one written since (seen again) stays.
        Elasticsearch matches against its last refreshed view."""

    async def summary(self, now: float, offline_after: float) -> FleetSummary: ...

    async def list_configs(self) -> list[Config]:
        """Every config, by name."""

    async def get_config(self, name: str) -> Config | None: ...

    async def put_config(self, name: str, request: ConfigRequest, now: float) -> tuple[Config, bool]:
        """Create or replace; (the stored config, whether its content changed). The version goes up by
        one on a change and stays on an identical PUT. Raises VersionConflict when
        `request.expected_version` is set and is not the stored version (0 when none is stored)."""

    async def delete_config(self, name: str, expected_version: int | None = None) -> bool:
        """False if there was no such config. Raises VersionConflict like put_config."""

    async def config_versions(self, name: str) -> list[ConfigVersion]:
        """The config's stored versions, newest first: the last KEEP_VERSIONS of its changes since it
        was last created ([] when there is no such config)."""

    async def list_connection_settings(self) -> list[ConnectionSettings]:
        """Every connection setting (gateway/fleet/connection_settings.py), by name."""

    async def get_connection_settings(self, name: str) -> ConnectionSettings | None: ...

    async def put_connection_settings(
        self, name: str, spec: SettingsSpec, now: float
    ) -> tuple[ConnectionSettings, bool]:
        """Create or replace; (the stored settings, whether their content changed). The version goes
        up by one on a change and stays on an identical PUT."""

    async def delete_connection_settings(self, name: str) -> bool:
        """False if there was no such connection setting."""

    async def list_packages(self) -> list[Package]:
        """Every package (gateway/fleet/packages.py), by name."""

    async def get_package(self, name: str) -> Package | None: ...

    async def put_package(self, name: str, request: PackageRequest, now: float) -> tuple[Package, bool]:
        """As put_config: create or replace; the revision (`version`) goes up by one on a change."""

    async def delete_package(self, name: str, expected_version: int | None = None) -> bool:
        """As delete_config; deleting a package deletes its revisions and rollout record."""

    async def package_versions(self, name: str) -> list[PackageVersion]:
        """As config_versions: the package's last KEEP_VERSIONS revisions, newest first."""

    async def get_package_rollout(self, name: str) -> StoredRollout | None:
        """As get_rollout, for the rollout of a package."""

    async def list_package_rollouts(self) -> list[Rollout]: ...

    async def put_package_rollout(self, rollout: Rollout, expected_rev: str | None) -> str | None:
        """As put_rollout, for the package `rollout.name` (None when there is no such package)."""

    async def get_rollout(self, name: str) -> StoredRollout | None:
        """The config's rollout record (read through: never an older copy), or None."""

    async def list_rollouts(self) -> list[Rollout]:
        """Every config's rollout record, by name."""

    async def put_rollout(self, rollout: Rollout, expected_rev: str | None) -> str | None:
        """Compare-and-set the rollout record of config `rollout.name`: written only if the stored
        record's revision is `expected_rev` (None: only if there is no record). The new revision, or
        None when it was not written (another write came first, or there is no such config): read
        again and decide again. Deleting a config deletes its rollout record."""
