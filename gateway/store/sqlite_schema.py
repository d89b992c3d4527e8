"""The SQLite schema and the mapping between `agents` rows and `AgentState` records.

Rows keep every `AgentState` field losslessly (sub-messages as their protobuf bytes) plus columns
derived with `facts()` for filtering, search and summaries. `uint64` fields (`sequence_num`,
`capabilities`) are stored as the signed 64-bit integer with the same bits, since SQLite integers are
signed.
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

from gateway.fleet.agent import AgentState, facts, healthy_of
from gateway.fleet.package_status import package_terms
from gateway.fleet.selector import Selector
from gateway.fleet.status import Status
from gateway.store.sqlite_configs import CONFIGS
from gateway.store.sqlite_packages import PACKAGES
from gateway.store.sqlite_settings import TABLE as _CONNECTION_SETTINGS

SCHEMA_VERSION = 12
UID_LENGTH = 16
_UINT64 = 1 << 64
_INT64_MAX = (1 << 63) - 1
# Only the rows with a command waiting (almost none), in the order pending_commands() reads them: the
# command sweep reads this index, never the table.
_PENDING_COMMAND_INDEX = (
    "CREATE INDEX IF NOT EXISTS agents_pending_command ON agents (last_seen DESC, uid, pending_command) "
    "WHERE pending_command IS NOT NULL"
)

_CONFIGS, _CONFIG_VERSIONS, _ROLLOUTS = CONFIGS.tables()
# The packages (gateway/fleet/packages.py), their last revisions and their rollout records, as configs.
_PACKAGE_TABLES = PACKAGES.tables()
_PACKAGE_COLUMNS = (
    "ALTER TABLE agents ADD COLUMN package_statuses BLOB",
    "ALTER TABLE agents ADD COLUMN offered_packages_hash BLOB",
    "ALTER TABLE agents ADD COLUMN offered_packages_at REAL NOT NULL DEFAULT 0",
    # The reported package statuses as terms (JSON list), for ?package_status= filters.
    "ALTER TABLE agents ADD COLUMN package_terms TEXT NOT NULL DEFAULT '[]'",
)

# An agent's credential record (gateway/fleet/credentials.py) as JSON, NULL on shared keys; its kind,
# which GET /api/v1/agents?credential= filters on. Written only by put_credential: not in COLUMNS, so
# an agent write (UPSERT) never changes them and a new row starts on shared keys.
_CREDENTIAL_COLUMNS = (
    "ALTER TABLE agents ADD COLUMN credential TEXT",
    "ALTER TABLE agents ADD COLUMN credential_kind TEXT NOT NULL DEFAULT 'shared'",
)

SCHEMA = (
    """
    CREATE TABLE IF NOT EXISTS agents (
        uid BLOB PRIMARY KEY,
        uid_text TEXT NOT NULL UNIQUE,
        enrolled_at REAL NOT NULL,
        last_seen REAL NOT NULL,
        sequence_num INTEGER NOT NULL,
        capabilities INTEGER NOT NULL,
        description BLOB,
        health BLOB,
        effective_config BLOB,
        remote_config_status BLOB,
        disconnected INTEGER NOT NULL,
        previous_instance_uids BLOB NOT NULL,
        pending_command INTEGER,
        node TEXT NOT NULL,
        transport TEXT NOT NULL,
        offered_config_hash BLOB,
        offered_at REAL NOT NULL DEFAULT 0,
        failed_config_hash BLOB,
        healthy INTEGER,
        agent_type TEXT NOT NULL,
        agent_version TEXT NOT NULL,
        os_type TEXT NOT NULL,
        attrs TEXT NOT NULL,
        search TEXT NOT NULL,
        rev INTEGER NOT NULL DEFAULT 0,
        command_id TEXT NOT NULL DEFAULT '',
        duplicate_of BLOB,
        available_components BLOB,
        offered_settings_hash BLOB,
        key_id TEXT NOT NULL DEFAULT '',
        connection_settings_status BLOB,
        package_statuses BLOB,
        offered_packages_hash BLOB,
        offered_packages_at REAL NOT NULL DEFAULT 0,
        package_terms TEXT NOT NULL DEFAULT '[]',
        credential TEXT,
        credential_kind TEXT NOT NULL DEFAULT 'shared'
    )
    """,
    "CREATE INDEX IF NOT EXISTS agents_last_seen ON agents (last_seen)",
    "CREATE INDEX IF NOT EXISTS agents_type_version ON agents (agent_type, agent_version)",
    "CREATE INDEX IF NOT EXISTS agents_os_type ON agents (os_type)",
    _PENDING_COMMAND_INDEX,
    """
    CREATE TABLE IF NOT EXISTS uid_aliases (
        old_uid BLOB PRIMARY KEY,
        new_uid BLOB NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS uid_aliases_new_uid ON uid_aliases (new_uid)",
    _CONFIGS,
    _CONFIG_VERSIONS,
    # One rollout record per config (gateway/fleet/rollout_record.py), as JSON; `rev` for
    # compare-and-set.
    _ROLLOUTS,
    # Named connection settings (gateway/fleet/connection_settings.py), spec as JSON.
    _CONNECTION_SETTINGS,
    *_PACKAGE_TABLES,
)
# Statements that bring a file of schema version N-1 to N, by N; run before SCHEMA, in order.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    2: (
        "ALTER TABLE agents ADD COLUMN offered_config_hash BLOB",
        "ALTER TABLE agents ADD COLUMN offered_at REAL NOT NULL DEFAULT 0",
        "ALTER TABLE agents ADD COLUMN failed_config_hash BLOB",
    ),
    3: (_PENDING_COMMAND_INDEX,),
    4: ("ALTER TABLE agents ADD COLUMN rev INTEGER NOT NULL DEFAULT 0",),
    5: ("ALTER TABLE agents ADD COLUMN command_id TEXT NOT NULL DEFAULT ''",),
    6: (
        "ALTER TABLE agents ADD COLUMN duplicate_of BLOB",
        "ALTER TABLE agents ADD COLUMN available_components BLOB",
    ),
    # Each existing config starts its history at its current version (files from before configs
    # existed get the table first).
    7: (
        _CONFIGS,
        _CONFIG_VERSIONS,
        "INSERT INTO config_versions (name, version, spec, hash, created_at) "
        "SELECT name, version, spec, hash, updated_at FROM configs",
    ),
    8: ("ALTER TABLE agents ADD COLUMN offered_settings_hash BLOB",),
    # Agents enrolled before keys were bound get '': bound to none, adopted by the next key that speaks.
    9: ("ALTER TABLE agents ADD COLUMN key_id TEXT NOT NULL DEFAULT ''",),
    # Connection settings (issue 19): their table, and each agent's reported status of them.
    10: (_CONNECTION_SETTINGS, "ALTER TABLE agents ADD COLUMN connection_settings_status BLOB"),
    # Packages (issue 19): their tables, and each agent's reported statuses and offer bookkeeping.
    11: (*_PACKAGE_TABLES, *_PACKAGE_COLUMNS),
    # Per-agent credentials (issue 19): each agent's credential record, and its kind for filters.
    12: _CREDENTIAL_COLUMNS,
}

# Every column of `agents`, in the order `row_of()` produces them.
COLUMNS = (
    "uid",
    "uid_text",
    "enrolled_at",
    "last_seen",
    "sequence_num",
    "capabilities",
    "description",
    "health",
    "effective_config",
    "remote_config_status",
    "disconnected",
    "previous_instance_uids",
    "pending_command",
    "node",
    "transport",
    "offered_config_hash",
    "offered_at",
    "failed_config_hash",
    "healthy",
    "agent_type",
    "agent_version",
    "os_type",
    "attrs",
    "search",
    "command_id",
    "duplicate_of",
    "available_components",
    "offered_settings_hash",
    "key_id",
    "connection_settings_status",
    "package_statuses",
    "offered_packages_hash",
    "offered_packages_at",
    "package_terms",
)
# Columns an upsert of an existing row keeps: they change only through a write that names them.
_NAMED_ONLY = ("pending_command", "command_id", "key_id")
# Every statement that changes a row sets `rev` to a new random 63-bit value (new_rev()): a node's
# cached copy of a row (sqlite_cache.py) is current exactly while the stored rev is still the one it
# read. Random rather than counted, so a row deleted and created again never repeats an old rev.
_ROW_MARKS = f"({', '.join('?' for _ in COLUMNS)}, ?)"
_ON_CONFLICT = (
    " ON CONFLICT (uid) DO UPDATE SET "
    # pending_command and its id, and key_id, are left out: only a write that names one may change it
    # (sqlite_writes._named), so a node's stale copy never undoes a command or an admin's key move.
    + ", ".join(f"{c} = excluded.{c}" for c in COLUMNS if c not in ("uid", *_NAMED_ONLY))
    + ", rev = excluded.rev WHERE excluded.last_seen >= agents.last_seen"
)


@lru_cache(maxsize=32)
def upsert_rows(rows: int) -> str:
    """The upsert of `rows` agents' rows (each COLUMNS, then rev) in one statement."""
    values = ", ".join([_ROW_MARKS] * rows)
    return f"INSERT INTO agents ({', '.join(COLUMNS)}, rev) VALUES {values}{_ON_CONFLICT}"


UPSERT = upsert_rows(1)


@lru_cache(maxsize=64)
def touch_rows(rows: int, *, cached: bool) -> str:
    """A heartbeat's fields written to `rows` agents' existing rows in one statement: to rows no
    newer than the heartbeat and, when `cached`, only at the rev the node has cached (the node then
    knows the whole row after it without reading it back).
    Each row's values: uid, last_seen, sequence_num, node, transport, new rev (then the cached rev)."""
    marks = "(?, ?, ?, ?, ?, ?, ?)" if cached else "(?, ?, ?, ?, ?, ?)"
    on_rev = " AND agents.rev = v.column7" if cached else ""
    return (
        "UPDATE agents SET last_seen = v.column2, sequence_num = v.column3, node = v.column4, "
        f"transport = v.column5, rev = v.column6 FROM (VALUES {', '.join([marks] * rows)}) AS v "
        f"WHERE agents.uid = v.column1 AND agents.last_seen <= v.column2{on_rev}"
    )


# What a status write sets: every column but the row's identity (uid, uid_text, enrolled_at, the
# uids it had, duplicate_of), what is derived from the description or the package statuses (the
# indexed and searched columns, the larger blobs) and the columns only a write naming them changes.
# A write changing none of WHOLE_ROW_FIELDS (an APPLIED, a health change, an offer) is an UPDATE of
# these columns: on a file of 100,000 agents, 1,000 of them take about half the time of an upsert of
# their whole rows (docs/performance.md).
STATUS_COLUMNS = (
    "last_seen",
    "sequence_num",
    "capabilities",
    "health",
    "healthy",
    "effective_config",
    "remote_config_status",
    "disconnected",
    "node",
    "transport",
    "offered_config_hash",
    "offered_at",
    "failed_config_hash",
    "available_components",
    "offered_settings_hash",
    "connection_settings_status",
    "offered_packages_hash",
    "offered_packages_at",
)
# The changes (AgentWrite.changed) that need the whole row written.
WHOLE_ROW_FIELDS = frozenset(
    {"enrolled", "instance_uid", "description", "package_statuses", "pending_command", "command_id", "key_id"}
)


def status_row_of(state: AgentState) -> tuple[Any, ...]:
    """The uid, then the record's STATUS_COLUMNS."""
    healthy = healthy_of(state)
    return (
        state.instance_uid,
        float(state.last_seen),
        to_int64(state.sequence_num),
        to_int64(state.capabilities),
        state.health,
        None if healthy is None else int(healthy),
        state.effective_config,
        state.remote_config_status,
        int(state.disconnected),
        state.node,
        state.transport,
        state.offered_config_hash,
        float(state.offered_at),
        state.failed_config_hash,
        state.available_components,
        state.offered_settings_hash,
        state.connection_settings_status,
        state.offered_packages_hash,
        float(state.offered_packages_at),
    )


@lru_cache(maxsize=32)
def update_status_rows(rows: int) -> str:
    """The status write of `rows` agents in one statement, to rows no newer than it. Each row's values:
    status_row_of(), then a new rev."""
    count = len(STATUS_COLUMNS) + 2
    marks = f"({', '.join('?' for _ in range(count))})"
    sets = ", ".join(f"{c} = v.column{i + 2}" for i, c in enumerate(STATUS_COLUMNS))
    return (
        f"UPDATE agents SET {sets}, rev = v.column{count} FROM (VALUES {', '.join([marks] * rows)}) AS v "
        "WHERE agents.uid = v.column1 AND agents.last_seen <= v.column2"
    )


SET_PENDING_COMMAND = "UPDATE agents SET pending_command = ?, command_id = ?, rev = ? WHERE uid = ?"
SET_KEY_ID = "UPDATE agents SET key_id = ?, rev = ? WHERE uid = ?"
# The columns an AgentState is read back from, in `state_of()` order.
STATE_COLUMNS = (
    "uid, enrolled_at, last_seen, sequence_num, capabilities, description, health, effective_config, "
    "remote_config_status, disconnected, previous_instance_uids, pending_command, node, transport, "
    "offered_config_hash, offered_at, failed_config_hash, command_id, duplicate_of, "
    "available_components, offered_settings_hash, key_id, connection_settings_status, package_statuses, "
    "offered_packages_hash, offered_packages_at"
)
SELECT_STATE = f"SELECT {STATE_COLUMNS} FROM agents"
# The same with the row's rev last, for the node's record cache.
SELECT_STATE_REV = f"SELECT {STATE_COLUMNS}, rev FROM agents"
# Answered from agents_pending_command alone (a covering index): no row of the table is read.
SELECT_PENDING_COMMANDS = (
    "SELECT uid, pending_command FROM agents WHERE pending_command IS NOT NULL "
    "ORDER BY last_seen DESC LIMIT ?"
)

# derive_status() in SQL. `? - last_seen > ?` is the same IEEE double arithmetic as Python's
# `now - state.last_seen > offline_after`, so the boundary agrees to the last bit.
STATUS_SQL: dict[Status, str] = {
    "disconnected": "disconnected = 1",
    "offline": "disconnected = 0 AND (:now - last_seen) > :offline_after",
    "unhealthy": "disconnected = 0 AND NOT ((:now - last_seen) > :offline_after) AND healthy = 0",
    "online": (
        "disconnected = 0 AND NOT ((:now - last_seen) > :offline_after) AND (healthy IS NULL OR healthy = 1)"
    ),
}
STATUS_CASE = (
    "CASE WHEN disconnected = 1 THEN 'disconnected' "
    "WHEN (:now - last_seen) > :offline_after THEN 'offline' "
    "WHEN healthy = 0 THEN 'unhealthy' ELSE 'online' END"
)


# A generator of its own: the module-level one is global state that other code (and hypothesis, which
# watches it while it draws test data) must not see move when a store writes.
_revs = random.Random()


def new_rev() -> int:
    """A fresh row revision (see UPSERT)."""
    return _revs.getrandbits(63)


def to_int64(value: int) -> int:
    return value - _UINT64 if value > _INT64_MAX else value


def from_int64(value: int) -> int:
    return value + _UINT64 if value < 0 else value


def _join_uids(uids: Sequence[bytes]) -> bytes:
    return b"".join(uids)


def _split_uids(data: bytes) -> tuple[bytes, ...]:
    return tuple(data[i : i + UID_LENGTH] for i in range(0, len(data), UID_LENGTH))


def row_of(state: AgentState) -> tuple[Any, ...]:
    """The `agents` row for a record, in `COLUMNS` order."""
    derived = facts(state)
    uid_text = state.uid
    return (
        state.instance_uid,
        uid_text,
        float(state.enrolled_at),
        float(state.last_seen),
        to_int64(state.sequence_num),
        to_int64(state.capabilities),
        state.description,
        state.health,
        state.effective_config,
        state.remote_config_status,
        int(state.disconnected),
        _join_uids(state.previous_instance_uids),
        state.pending_command,
        state.node,
        state.transport,
        state.offered_config_hash,
        float(state.offered_at),
        state.failed_config_hash,
        None if derived.healthy is None else int(derived.healthy),
        derived.agent_type,
        derived.agent_version,
        derived.os_type,
        json.dumps(derived.attributes, ensure_ascii=False, separators=(",", ":"), sort_keys=True),
        derived.search_text(uid_text),
        state.command_id,
        state.duplicate_of,
        state.available_components,
        state.offered_settings_hash,
        state.key_id,
        state.connection_settings_status,
        state.package_statuses,
        state.offered_packages_hash,
        float(state.offered_packages_at),
        json.dumps(package_terms(state.package_statuses), separators=(",", ":")),
    )


def state_of(row: Sequence[Any]) -> AgentState:
    return AgentState(
        instance_uid=bytes(row[0]),
        enrolled_at=row[1],
        last_seen=row[2],
        sequence_num=from_int64(row[3]),
        capabilities=from_int64(row[4]),
        description=row[5],
        health=row[6],
        effective_config=row[7],
        remote_config_status=row[8],
        disconnected=bool(row[9]),
        previous_instance_uids=_split_uids(row[10]),
        pending_command=row[11],
        node=row[12],
        transport=row[13],
        offered_config_hash=row[14],
        offered_at=row[15],
        failed_config_hash=row[16],
        command_id=row[17],
        duplicate_of=None if row[18] is None else bytes(row[18]),
        available_components=None if row[19] is None else bytes(row[19]),
        offered_settings_hash=None if row[20] is None else bytes(row[20]),
        key_id=row[21],
        connection_settings_status=None if row[22] is None else bytes(row[22]),
        package_statuses=None if row[23] is None else bytes(row[23]),
        offered_packages_hash=None if row[24] is None else bytes(row[24]),
        offered_packages_at=row[25],
    )


def selector_sql(selector: Selector, params: dict[str, Any], prefix: str = "s") -> str:
    """A WHERE condition over `agents` equal to `selector.matches(uid, facts(state).attributes)`.

    `attrs` holds exactly the flattened text attributes that matches() sees. Adds its bound values to
    `params` under names starting with `prefix`.
    """
    counter = iter(range(1 << 30))

    def bind(value: object) -> str:
        name = f"{prefix}{next(counter)}"
        params[name] = value
        return f":{name}"

    def attr(key: str, values: Sequence[str] | None) -> str:
        cond = f"a.key = {bind(key)}"
        if values is not None:
            cond += f" AND a.value IN ({', '.join(bind(v) for v in values)})"
        return f"EXISTS (SELECT 1 FROM json_each(agents.attrs) AS a WHERE {cond})"

    labels: list[str] = [attr(key, [value]) for key, value in selector.match]
    for e in selector.expressions:
        if e.operator == "In":
            labels.append(attr(e.key, e.values))
        elif e.operator == "NotIn":
            labels.append(f"NOT {attr(e.key, e.values)}")
        elif e.operator == "Exists":
            labels.append(attr(e.key, None))
        else:
            labels.append(f"NOT {attr(e.key, None)}")
    alternatives: list[str] = []
    if selector.instance_uids:
        alternatives.append(f"uid IN ({', '.join(bind(u) for u in sorted(selector.instance_uids))})")
    if labels:
        alternatives.append("(" + " AND ".join(labels) + ")")
    if not alternatives:
        return "0"
    return "(" + " OR ".join(alternatives) + ")"
