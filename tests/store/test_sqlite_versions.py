"""SQLite's config history across a schema upgrade: a version 6 file (before config versions) gets
each config's current version as the first entry of its history."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest

from gateway.store import sqlite_versioned
from gateway.store.base import StoreError
from gateway.store.sqlite import SCHEMA_VERSION, SQLiteStore
from tests.store.test_contract_configs import put, spec
from tests.store.test_contract_rollouts import rollout

pytestmark = pytest.mark.anyio


async def test_a_version_6_file_gets_a_history_per_config(tmp_path: Path) -> None:
    db_path = str(tmp_path / "v6.db")
    store = SQLiteStore(db_path)
    await store.open()
    try:
        await store.put_config("base", put(spec()), 1.0)
        current, _ = await store.put_config("base", put(spec("b: 2\n")), 2.0)
    finally:
        await store.close()
    with closing(sqlite3.connect(db_path)) as conn:
        conn.execute("DROP TABLE config_versions")
        conn.execute("ALTER TABLE agents DROP COLUMN offered_settings_hash")
        conn.execute("ALTER TABLE agents DROP COLUMN key_id")
        conn.execute("ALTER TABLE agents DROP COLUMN connection_settings_status")
        conn.execute("ALTER TABLE agents DROP COLUMN credential")
        conn.execute("ALTER TABLE agents DROP COLUMN credential_kind")
        conn.execute("DROP TABLE connection_settings")
        for table in ("packages", "package_versions", "package_rollouts"):
            conn.execute(f"DROP TABLE {table}")
        for column in ("package_statuses", "offered_packages_hash", "offered_packages_at", "package_terms"):
            conn.execute(f"ALTER TABLE agents DROP COLUMN {column}")
        conn.execute("PRAGMA user_version = 6")
        conn.commit()
    store = SQLiteStore(db_path)
    await store.open()
    try:
        versions = await store.config_versions("base")
        assert [(v.version, v.hash, v.created_at, v.spec) for v in versions] == [
            (2, current.hash, 2.0, current.spec)
        ]
        third, _ = await store.put_config("base", put(spec("c: 3\n")), 3.0)
        assert [v.version for v in await store.config_versions("base")] == [3, 2]
        assert third.version == 3
    finally:
        await store.close()
    with closing(sqlite3.connect(db_path)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 12


async def test_an_unreadable_rollout_record_is_a_store_error(tmp_path: Path) -> None:
    db_path = str(tmp_path / "odd.db")
    store = SQLiteStore(db_path)
    await store.open()
    try:
        with closing(sqlite3.connect(db_path)) as conn:
            conn.execute("INSERT INTO rollouts (name, record, rev) VALUES ('odd', '{nope', 1)")
            conn.commit()
        with pytest.raises(StoreError, match="rollout record of config 'odd'"):
            await store.get_rollout("odd")
        with pytest.raises(StoreError, match="rollout record of config 'odd'"):
            await store.list_rollouts()
    finally:
        await store.close()


async def test_a_failed_rollout_write_rolls_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = SQLiteStore(str(tmp_path / "fail.db"))
    await store.open()
    try:
        await store.put_config("base", put(spec()), 1.0)

        def broken(*args: object) -> str | None:
            raise sqlite3.OperationalError("disk I/O error")

        monkeypatch.setattr(sqlite_versioned, "_put_rollout", broken)
        with pytest.raises(StoreError, match="disk I/O error"):
            await store.put_rollout(rollout(), None)
        monkeypatch.undo()
        # The write connection is usable again: no transaction was left open.
        assert await store.put_rollout(rollout(), None) == "1"
    finally:
        await store.close()
