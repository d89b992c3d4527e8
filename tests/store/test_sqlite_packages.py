"""SQLite schema version 11 (packages): a version 10 file gets the package tables and the agents'
package columns, keeps its agents and configs, and stores packages and statuses from then on."""

from __future__ import annotations

import sqlite3
import time
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import pytest

from gateway.fleet.agent import AgentState, AgentWrite
from gateway.fleet.packages import parse_request
from gateway.proto import opamp_pb2 as pb
from gateway.store.base import AgentQuery
from gateway.store.sqlite import SCHEMA_VERSION, SQLiteStore
from tests.store.test_contract_configs import put, spec
from tests.support.packages import body

pytestmark = pytest.mark.anyio
UID = bytes(range(16))


async def test_a_version_10_file_gets_packages_and_credentials(tmp_path: Path) -> None:
    db_path = str(tmp_path / "v10.db")
    store = SQLiteStore(db_path)
    await store.open()
    try:
        config, _ = await store.put_config("base", put(spec()), 1.0)
        await store.write([AgentWrite(AgentState(UID, 1.0, 2.0, 3, 4), frozenset({"enrolled"}))])
    finally:
        await store.close()
    with closing(sqlite3.connect(db_path)) as conn:
        for table in ("packages", "package_versions", "package_rollouts"):
            conn.execute(f"DROP TABLE {table}")
        for column in ("package_statuses", "offered_packages_hash", "offered_packages_at", "package_terms"):
            conn.execute(f"ALTER TABLE agents DROP COLUMN {column}")
        for column in ("credential", "credential_kind"):
            conn.execute(f"ALTER TABLE agents DROP COLUMN {column}")
        conn.execute("PRAGMA user_version = 10")
        conn.commit()
    store = SQLiteStore(db_path)
    await store.open()
    try:
        state = await store.get(UID)
        assert state == AgentState(UID, 1.0, 2.0, 3, 4)
        assert await store.list_configs() == [config]
        assert await store.list_packages() == []
        package, created = await store.put_package("otelcol", parse_request("otelcol", body()), 5.0)
        assert created and package.version == 1
        statuses = pb.PackageStatuses(server_provided_all_packages_hash=b"\x01")
        entry = statuses.packages["otelcol"]
        entry.status = pb.PackageStatusEnum_Installed
        entry.agent_has_hash = b"\xab"
        reported = replace(state, last_seen=time.time(), package_statuses=statuses.SerializeToString())
        await store.write([AgentWrite(reported, frozenset({"package_statuses"}))])
        found = await store.list_agents(
            AgentQuery(with_package_states=("otelcol/installed/ab",)), time.time(), 60
        )
        assert [a.instance_uid for a in found.agents] == [UID]
        # Version 12: every agent starts on shared keys, with no credential record.
        assert await store.get_credentials([UID]) == {}
        shared = await store.list_agents(AgentQuery(credential="shared"), time.time(), 60)
        assert [a.instance_uid for a in shared.agents] == [UID]
    finally:
        await store.close()
    with closing(sqlite3.connect(db_path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 12
