"""What only SqliteStore has: WAL and synchronous FULL, migrations of older SQLite files, unopenable paths.

The contract both durable stores share runs on SQLite and PostgreSQL in test_store_contract.py."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from fabric.errors import ErrorCode, FabricError
from fabric.record import SqliteStore, SubmissionRecord
from fabric.record.sqlite import SCHEMA_VERSION

pytestmark = pytest.mark.timeout(60)


def rec(sid: str, created_at: float, state: str = "RUNNING", labels: dict[str, str] | None = None,
        team: str | None = None) -> SubmissionRecord:
    return SubmissionRecord(
        submission_id=sid, pipeline_id="pipe", spec={"nodes": [{"id": "a", "kind": "x"}], "n": 1.5},
        runtime_params={"max_parallel": 2}, plan_hash=f"plan-{sid}", request_hash=f"req-{sid}",
        created_at=created_at, team=team, labels=dict(labels or {}), state=state)


def test_wal_mode_and_synchronous_full(tmp_path: Path) -> None:
    with SqliteStore(tmp_path / "w.db") as s:
        assert s._conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert s._conn.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert s._conn.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
    conn = sqlite3.connect(tmp_path / "w.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"  # persistent in the file
    conn.close()


def test_schema_version_recorded_and_newer_rejected(tmp_path: Path) -> None:
    path = tmp_path / "v.db"
    with SqliteStore(path) as s:
        assert s.schema_version() == SCHEMA_VERSION == 6
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT version FROM schema_version").fetchall() == [(6,)]
    conn.execute("UPDATE schema_version SET version = 99")
    conn.commit()
    conn.close()
    with pytest.raises(FabricError) as info:
        SqliteStore(path)
    assert info.value.code == ErrorCode.STORE_UNAVAILABLE
    assert "schema version 99" in info.value.message and info.value.fix


def test_older_empty_database_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    sqlite3.connect(path).close()  # an existing file at version 0
    with SqliteStore(path) as s:
        assert s.schema_version() == SCHEMA_VERSION
        s.add_submission(rec("s1", 1.0))
        assert s.get_submission("s1") is not None


def test_a_version_1_store_with_data_is_migrated_to_the_latest(tmp_path: Path) -> None:
    from fabric.record.sqlite import _MIGRATIONS

    path = tmp_path / "v1.db"
    conn = sqlite3.connect(path)  # a store as the first release wrote it, with a submission in it
    for statement in _MIGRATIONS[1]:
        conn.execute(statement)
    conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    conn.execute("INSERT INTO schema_version VALUES (1)")
    conn.execute("INSERT INTO submissions (submission_id, pipeline_id, spec, runtime_params, plan_hash, "
                 "request_hash, created_at, team, labels, state) "
                 "VALUES ('old', 'p', '{}', '{}', 'h', 'r', 1.0, NULL, '{}', 'RUNNING')")
    conn.commit()
    conn.close()
    with SqliteStore(path) as s:
        assert s.schema_version() == SCHEMA_VERSION
        assert s.pipeline_versions(None, "p") == []  # v3: the catalogue table exists
        old = s.get_submission("old")
        assert old is not None and old.runtime_env == {} and old.state == "RUNNING"


def test_unopenable_paths_raise_store_unavailable(tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("not a directory")
    with pytest.raises(FabricError) as info:
        SqliteStore(tmp_path / "a_file" / "fabric.db")  # fails for root too
    assert info.value.code == ErrorCode.STORE_UNAVAILABLE
    with pytest.raises(FabricError) as info:
        SqliteStore(tmp_path / "absent.db", read_only=True)
    assert info.value.code == ErrorCode.STORE_UNAVAILABLE


