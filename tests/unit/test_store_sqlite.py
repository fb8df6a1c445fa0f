"""SqliteStore: parity with MemoryStore, durability, append-only audit, group commit, retention, export."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from fabric.errors import ErrorCode, FabricError
from fabric.record import Event, MemoryStore, SqliteStore, SubmissionRecord
from fabric.record.sqlite import SCHEMA_VERSION

pytestmark = pytest.mark.timeout(60)


def rec(sid: str, created_at: float, state: str = "RUNNING", labels: dict[str, str] | None = None,
        team: str | None = None) -> SubmissionRecord:
    return SubmissionRecord(
        submission_id=sid, pipeline_id="pipe", spec={"nodes": [{"id": "a", "kind": "x"}], "n": 1.5},
        runtime_params={"max_parallel": 2}, plan_hash=f"plan-{sid}", request_hash=f"req-{sid}",
        created_at=created_at, team=team, labels=dict(labels or {}), state=state)


def ev(sid: str, i: int, node: str | None = "a") -> Event:
    return Event(sid, node, "PENDING", "QUEUED", 1000.0 + i, attempt=i, reason=f"r{i}")


def raw_count(path: Path, table: str = "events") -> int:
    conn = sqlite3.connect(path)
    try:
        return conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0]
    finally:
        conn.close()


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if request.param == "memory":
        yield MemoryStore()
    else:
        s = SqliteStore(tmp_path / "fabric.db")
        yield s
        s.close()


def script(store: Any) -> list[Any]:
    """One scripted sequence through the Store protocol; returns everything it read back."""
    out: list[Any] = []
    store.add_submission(rec("s1", 1.0))
    store.add_submission(rec("s2", 2.0, team="ml"))
    store.add_submission(rec("s3", 3.0, labels={"env": "prod"}))
    out.append(store.get_submission("s2"))
    out.append(store.get_submission("missing"))
    store.set_state("s1", "SUCCEEDED")
    out.append([r.submission_id for r in store.list_submissions()])
    out.append([r.submission_id for r in store.list_submissions("RUNNING")])
    out.append([r.submission_id for r in store.list_submissions(limit=2)])
    out.append([r.submission_id for r in store.list_submissions("SUCCEEDED", 10)])
    store.append_events([ev("s1", 0, None), ev("s1", 1), ev("s2", 2)])
    store.append_events([ev("s1", 3, "b")])
    store.append_events([])
    out.append(store.events("s1"))
    out.append(store.events("s2"))
    out.append(store.events("missing"))
    store.put_log("s1", "a", 1, "second", "/logs/a-1")
    store.put_log("s1", "a", 0, "first", None)
    store.put_log("s1", "a", 1, "second, replaced", "/logs/a-1b")
    store.put_log("s1", "b", 0, "other node", None)
    out.append(store.get_log("s1", "a"))
    out.append(store.get_log("s1", "zzz"))
    with pytest.raises(KeyError):
        store.set_state("missing", "FAILED")
    return out


def test_protocol_assertions_hold_for_both_stores(store: Any) -> None:
    got = script(store)
    assert got[0] == rec("s2", 2.0, team="ml")
    assert got[1] is None
    assert got[2] == ["s3", "s2", "s1"]
    assert got[3] == ["s3", "s2"]
    assert got[4] == ["s3", "s2"]
    assert got[5] == ["s1"]
    assert got[6] == [ev("s1", 0, None), ev("s1", 1), ev("s1", 3, "b")]
    assert got[7] == [ev("s2", 2)]
    assert got[8] == []
    assert got[9] == [(0, "first", None), (1, "second, replaced", "/logs/a-1b")]
    assert got[10] == []
    assert store.get_submission("s1").state == "SUCCEEDED"


def test_sqlite_transcript_equals_memory_transcript(tmp_path: Path) -> None:
    with SqliteStore(tmp_path / "p.db") as durable:
        assert script(durable) == script(MemoryStore())


def test_everything_survives_close_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "dir" / "fabric.db"  # parent directories are created
    with SqliteStore(path, flush_interval_s=60) as s:
        s.add_submission(rec("s1", 1.0, labels={"env": "prod"}, team="ml"))
        s.set_state("s1", "FAILED")
        s.append_events([ev("s1", i) for i in range(5)])
        s.put_log("s1", "a", 0, "hello\nworld", "/tmp/a.log")
    # close() flushed what the 60 s interval had not
    with SqliteStore(path) as s:
        assert s.get_submission("s1") == rec("s1", 1.0, state="FAILED", labels={"env": "prod"}, team="ml")
        assert s.events("s1") == [ev("s1", i) for i in range(5)]
        assert s.get_log("s1", "a") == [(0, "hello\nworld", "/tmp/a.log")]
        assert s.list_submissions(labels={"env": "prod"})[0].submission_id == "s1"
    conn = sqlite3.connect(path)
    assert {row[0] for row in conn.execute("SELECT team FROM events")} == {"ml"}  # team filled from the submission
    conn.close()


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
        assert s.schema_version() == SCHEMA_VERSION == 2
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT version FROM schema_version").fetchall() == [(2,)]
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


def test_a_version_1_store_with_data_is_migrated_to_2(tmp_path: Path) -> None:
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
        assert s.schema_version() == 2
        old = s.get_submission("old")
        assert old is not None and old.runtime_env == {} and old.state == "RUNNING"


def test_events_are_append_only_in_sql(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    with SqliteStore(path) as s:
        s.add_submission(rec("s1", 1.0))
        s.append_events([ev("s1", 0), ev("s1", 1)])
    conn = sqlite3.connect(path)
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("UPDATE events SET target = 'FORGED' WHERE attempt = 0")
    with pytest.raises(sqlite3.DatabaseError, match="append-only"):
        conn.execute("DELETE FROM events")
    conn.commit()
    assert conn.execute("SELECT target FROM events ORDER BY id").fetchall() == [("QUEUED",), ("QUEUED",)]
    conn.close()


def test_batched_writes_readable_before_flush_and_durable_after(tmp_path: Path) -> None:
    path = tmp_path / "b.db"
    s = SqliteStore(path, flush_interval_s=60)
    s.add_submission(rec("s1", 1.0))
    assert raw_count(path, "submissions") == 1  # synchronous: visible to another connection at once
    s.append_events([ev("s1", i) for i in range(10)])
    s.put_log("s1", "a", 0, "tail", None)
    assert s.pending() == 11
    assert raw_count(path) == 0 and raw_count(path, "logs") == 0  # queued, not yet written
    assert s.events("s1") == [ev("s1", i) for i in range(10)]  # but reads see them
    assert s.get_log("s1", "a") == [(0, "tail", None)]
    s.flush()
    assert s.pending() == 0
    assert raw_count(path) == 10 and raw_count(path, "logs") == 1
    s.append_events([ev("s1", 10)])
    assert s.events("s1") == [ev("s1", i) for i in range(11)]  # file rows then queued rows, in order
    s.close()
    assert not s._thread.is_alive()
    with pytest.raises(FabricError) as info:
        s.append_events([ev("s1", 11)])
    assert info.value.code == ErrorCode.STORE_UNAVAILABLE


def test_background_flusher_commits_within_interval(tmp_path: Path) -> None:
    path = tmp_path / "bg.db"
    with SqliteStore(path, flush_interval_s=0.01) as s:
        s.append_events([ev("s1", i) for i in range(7)])
        assert wait_for(lambda: raw_count(path) == 7)
        assert s.pending() == 0


def test_concurrent_appends_from_eight_threads_lose_nothing(tmp_path: Path) -> None:
    path = tmp_path / "c.db"
    per_thread, batch = 2_000, 10
    with SqliteStore(path, flush_interval_s=0.005) as s:
        def writer(t: int) -> None:
            for start in range(0, per_thread, batch):
                s.append_events([ev(f"t{t}", i) for i in range(start, start + batch)])
                if start % 500 == 0:
                    s.events(f"t{t}")  # reads interleave with the flusher

        threads = [threading.Thread(target=writer, args=(t,)) for t in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for t in range(8):
            assert [e.attempt for e in s.events(f"t{t}")] == list(range(per_thread))
        s.flush()
    assert raw_count(path) == 8 * per_thread


def test_label_filter_and_before_paging(tmp_path: Path) -> None:
    with SqliteStore(tmp_path / "l.db") as s:
        for i in range(25):
            labels = {"env": "prod" if i % 2 else "dev", "team": "ml" if i % 3 == 0 else "web"}
            s.add_submission(rec(f"s{i:02d}", float(i), state="RUNNING" if i < 20 else "SUCCEEDED", labels=labels))
        s.add_submission(rec("odd", 100.0, labels={"env": "prod'\"", "we ird.key": "x"}))
        seen: list[str] = []
        before = None
        for _ in range(10):  # bounded: a broken cursor fails the test instead of looping
            page = s.list_submissions(limit=10, before=before)
            if not page:
                break
            seen += [r.submission_id for r in page]
            before = (page[-1].created_at, page[-1].submission_id)
        assert seen == ["odd"] + [f"s{i:02d}" for i in reversed(range(25))]
        prod_ml = s.list_submissions(labels={"env": "prod", "team": "ml"})
        assert [r.submission_id for r in prod_ml] == ["s21", "s15", "s09", "s03"]
        assert [r.submission_id for r in s.list_submissions("RUNNING", labels={"env": "prod", "team": "ml"})] == [
            "s15", "s09", "s03"]
        assert [r.submission_id for r in s.list_submissions(labels={"we ird.key": "x"})] == ["odd"]
        assert s.list_submissions(labels={"env": "nope"}) == []
        assert [r.submission_id for r in s.list_submissions(limit=3, before=(10.0, ""))] == ["s09", "s08", "s07"]
        assert [r.submission_id for r in s.non_terminal_submissions()] == [f"s{i:02d}" for i in range(20)] + ["odd"]


def test_delete_submission_data_keeps_the_audit_events(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    with SqliteStore(path, flush_interval_s=60) as s:
        s.add_submission(rec("s1", 1.0))
        s.add_submission(rec("s2", 2.0))
        s.append_events([ev("s1", i) for i in range(4)] + [ev("s2", 9)])
        s.put_log("s1", "a", 0, "x", None)
        s.put_log("s1", "b", 0, "y", None)  # still queued when deleting: must go too
        s.put_log("s2", "a", 0, "z", None)
        assert s.delete_submission_data("s1") == {"submissions": 1, "logs": 2, "events_kept": 4}
        assert s.get_submission("s1") is None
        assert s.get_log("s1", "a") == [] and s.get_log("s1", "b") == []
        assert s.events("s1") == [ev("s1", i) for i in range(4)]
        assert s.get_log("s2", "a") == [(0, "z", None)]
        assert [r.submission_id for r in s.list_submissions()] == ["s2"]
        assert s.delete_submission_data("s1") == {"submissions": 0, "logs": 0, "events_kept": 4}
    assert raw_count(path) == 5


def test_retention_deletes_a_submissions_data_but_keeps_its_audit_on_either_store(store: Any) -> None:
    # The registry's sweep calls this on whichever store FABRIC_STORE chose (MemoryStore once lacked it).
    store.add_submission(rec("s1", 1.0, state="SUCCEEDED"))
    store.add_submission(rec("s2", 2.0, state="SUCCEEDED"))
    store.append_events([ev("s1", i) for i in range(3)] + [ev("s2", 9)])
    store.put_log("s1", "a", 0, "x", None)
    store.put_log("s1", "a", 1, "x again", None)
    store.put_log("s1", "b", 0, "y", "/tmp/b.log")
    store.put_log("s2", "a", 0, "z", None)
    assert store.delete_submission_data("s1") == {"submissions": 1, "logs": 3, "events_kept": 3}
    assert store.get_submission("s1") is None
    assert store.get_log("s1", "a") == [] and store.get_log("s1", "b") == []
    assert store.events("s1") == [ev("s1", i) for i in range(3)]
    assert [r.submission_id for r in store.list_submissions()] == ["s2"]
    assert store.get_log("s2", "a") == [(0, "z", None)]
    assert store.delete_submission_data("s1") == {"submissions": 0, "logs": 0, "events_kept": 3}


def test_read_only_store_raises_store_unavailable_and_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "ro.db"
    with SqliteStore(path) as s:
        s.add_submission(rec("s1", 1.0))
    ro = SqliteStore(path, read_only=True, flush_interval_s=60)
    assert ro.get_submission("s1") == rec("s1", 1.0)  # reads still work
    for write in (lambda: ro.add_submission(rec("s2", 2.0)), lambda: ro.set_state("s1", "FAILED")):
        with pytest.raises(FabricError) as info:
            write()
        assert info.value.code == ErrorCode.STORE_UNAVAILABLE and info.value.fix
    ro.append_events([ev("s1", 0)])
    ro.put_log("s1", "a", 0, "x", None)
    with pytest.raises(FabricError) as info:
        ro.flush()
    assert info.value.code == ErrorCode.STORE_UNAVAILABLE
    assert ro.events("s1") == [ev("s1", 0)] and ro.pending() == 2  # the batch is kept, not lost
    with pytest.raises(FabricError):
        ro.close()  # close cannot flush either, and says so
    with SqliteStore(path) as s:
        assert s.get_submission("s1").state == "RUNNING"
        assert s.get_submission("s2") is None
        assert s.events("s1") == [] and s.get_log("s1", "a") == []


def test_unopenable_paths_raise_store_unavailable(tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("not a directory")
    with pytest.raises(FabricError) as info:
        SqliteStore(tmp_path / "a_file" / "fabric.db")  # fails for root too
    assert info.value.code == ErrorCode.STORE_UNAVAILABLE
    with pytest.raises(FabricError) as info:
        SqliteStore(tmp_path / "absent.db", read_only=True)
    assert info.value.code == ErrorCode.STORE_UNAVAILABLE


def test_background_failure_is_kept_reraised_and_batch_retained(tmp_path: Path) -> None:
    path = tmp_path / "f.db"
    s = SqliteStore(path, flush_interval_s=0.01)
    s.add_submission(rec("s1", 1.0))
    conn = sqlite3.connect(path)  # make every log write fail, as a full disk would
    conn.execute("CREATE TRIGGER boom BEFORE INSERT ON logs BEGIN SELECT RAISE(ABORT, 'simulated disk full'); END")
    conn.commit()
    s.append_events([ev("s1", 0)])
    s.put_log("s1", "a", 0, "x", None)
    assert wait_for(lambda: s._bg_error is not None)
    with pytest.raises(FabricError, match="simulated disk full") as info:
        s.set_state("s1", "SUCCEEDED")  # the next synchronous write reports the background failure
    assert info.value.code == ErrorCode.STORE_UNAVAILABLE
    assert raw_count(path) == 0  # one transaction per batch: the event was not half-written either
    assert s.events("s1") == [ev("s1", 0)] and s.get_log("s1", "a") == [(0, "x", None)]
    conn.execute("DROP TRIGGER boom")
    conn.commit()
    conn.close()
    assert wait_for(lambda: s.pending() == 0)  # the flusher retries and, with the disk back, drains the queue
    s.flush()  # a successful retry clears the error: nothing was lost, so nothing is reported
    s.close()
    assert raw_count(path) == 1 and raw_count(path, "logs") == 1


def test_export_events_parquet_round_trip(tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    with SqliteStore(tmp_path / "e.db", flush_interval_s=60) as s:
        s.add_submission(rec("s1", 1.0, team="ml"))
        events = [ev("s1", 0, None), ev("s1", 1), ev("s2", 2, "b")]
        s.append_events(events)  # still queued: export flushes first
        assert s.export_events_parquet(tmp_path / "out" / "all.parquet") == 3
        assert s.export_events_parquet(tmp_path / "s2.parquet", "s2") == 1
        assert s.export_events_parquet(tmp_path / "none.parquet", "missing") == 0
    rows = pq.read_table(tmp_path / "out" / "all.parquet").to_pylist()
    fields = ("submission_id", "node_id", "source", "target", "at", "attempt", "reason")
    assert [Event(*(row[f] for f in fields)) for row in rows] == events
    assert [row["team"] for row in rows] == ["ml", "ml", None]
    assert [row["id"] for row in rows] == [1, 2, 3]
    assert [row["submission_id"] for row in pq.read_table(tmp_path / "s2.parquet").to_pylist()] == ["s2"]
    assert pq.read_table(tmp_path / "none.parquet").num_rows == 0


def test_hundred_thousand_events_are_group_committed(tmp_path: Path) -> None:
    path = tmp_path / "perf.db"
    with SqliteStore(path) as s:
        s.add_submission(rec("s1", 1.0))
        batch = [ev("s1", i) for i in range(100)]
        start = time.perf_counter()
        for _ in range(1_000):
            s.append_events(batch)
        s.flush()
        elapsed = time.perf_counter() - start
    print(f"\n100,000 events appended and committed in {elapsed:.2f} s")
    assert raw_count(path) == 100_000
    assert elapsed < 10
