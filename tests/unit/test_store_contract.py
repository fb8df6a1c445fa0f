"""The durable stores' contract, run on SQLite and on a real PostgreSQL (tests/pg.py): parity with MemoryStore,
durability across reopen, schema versions, the append-only audit, group commit, retention, read-only, export."""

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
from fabric.record.batched import BatchedStore

pytestmark = pytest.mark.timeout(90)


def rec(sid: str, created_at: float, state: str = "RUNNING", labels: dict[str, str] | None = None,
        team: str | None = None) -> SubmissionRecord:
    return SubmissionRecord(
        submission_id=sid, pipeline_id="pipe", spec={"nodes": [{"id": "a", "kind": "x"}], "n": 1.5},
        runtime_params={"max_parallel": 2}, plan_hash=f"plan-{sid}", request_hash=f"req-{sid}",
        created_at=created_at, team=team, labels=dict(labels or {}), state=state)


def ev(sid: str, i: int, node: str | None = "a") -> Event:
    return Event(sid, node, "PENDING", "QUEUED", 1000.0 + i, attempt=i, reason=f"r{i}")


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


class Backend:
    """One durable store's location, opened as often as a test likes, plus raw SQL on it from outside."""

    def __init__(self, kind: str, where: str) -> None:
        self.kind, self.where = kind, where

    def open(self, **options: Any) -> BatchedStore:
        if self.kind == "sqlite":
            return SqliteStore(self.where, **options)
        from fabric.record.postgres import PostgresStore

        return PostgresStore(self.where, **options)

    def sql(self, statement: str) -> list[tuple[Any, ...]]:
        """Run one statement on a connection of its own (committed), as another process would."""
        if self.kind == "sqlite":
            conn = sqlite3.connect(self.where)
            try:
                rows = conn.execute(statement).fetchall()
                conn.commit()
                return rows
            finally:
                conn.close()
        import psycopg

        with psycopg.connect(self.where, autocommit=True) as pg:
            cur = pg.execute(statement)
            return cur.fetchall() if cur.description else []

    def count(self, table: str = "events") -> int:
        return int(self.sql(f"SELECT COUNT(*) FROM {table}")[0][0])

    def fail_log_writes(self, on: bool) -> None:
        """Make every log write fail (as a full disk would), or stop doing so."""
        if self.kind == "sqlite":
            self.sql("CREATE TRIGGER boom BEFORE INSERT ON logs BEGIN SELECT RAISE(ABORT, 'simulated disk full'); "
                     "END" if on else "DROP TRIGGER boom")
        elif on:
            self.sql("CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS "
                     "$$ BEGIN RAISE EXCEPTION 'simulated disk full'; END $$")
            self.sql("CREATE TRIGGER boom BEFORE INSERT ON logs FOR EACH ROW EXECUTE FUNCTION boom()")
        else:
            self.sql("DROP TRIGGER boom ON logs")


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    if request.param == "sqlite":
        return Backend("sqlite", str(tmp_path / "fabric.db"))
    return Backend("postgres", request.getfixturevalue("postgres_url"))


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Any]:
    if request.param == "memory":
        yield MemoryStore()
        return
    s = Backend(request.param, str(tmp_path / "fabric.db") if request.param == "sqlite"
                else request.getfixturevalue("postgres_url")).open()
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


def test_protocol_assertions_hold_for_every_store(store: Any) -> None:
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


def test_durable_transcript_equals_memory_transcript(backend: Backend) -> None:
    with backend.open() as durable:
        assert script(durable) == script(MemoryStore())


def test_everything_survives_close_and_reopen(backend: Backend) -> None:
    with backend.open(flush_interval_s=60) as s:
        s.add_submission(rec("s1", 1.0, labels={"env": "prod"}, team="ml"))
        s.set_state("s1", "FAILED")
        s.append_events([ev("s1", i) for i in range(5)])
        s.put_log("s1", "a", 0, "hello\nworld", "/tmp/a.log")
    # close() flushed what the 60 s interval had not
    with backend.open() as s:
        assert s.get_submission("s1") == rec("s1", 1.0, state="FAILED", labels={"env": "prod"}, team="ml")
        assert s.events("s1") == [ev("s1", i) for i in range(5)]
        assert s.get_log("s1", "a") == [(0, "hello\nworld", "/tmp/a.log")]
        assert s.list_submissions(labels={"env": "prod"})[0].submission_id == "s1"
    assert {row[0] for row in backend.sql("SELECT team FROM events")} == {"ml"}  # filled from the submission


def test_schema_version_recorded_and_newer_rejected(backend: Backend) -> None:
    with backend.open() as s:
        version = s.schema_version()  # type: ignore[attr-defined]
        assert version >= 1
    assert backend.sql("SELECT version FROM schema_version") == [(version,)]
    with backend.open() as s:  # reopening an up-to-date store migrates nothing
        assert s.schema_version() == version  # type: ignore[attr-defined]
    backend.sql("UPDATE schema_version SET version = 99")
    with pytest.raises(FabricError) as info:
        backend.open()
    assert info.value.code == ErrorCode.STORE_UNAVAILABLE
    assert "schema version 99" in info.value.message and info.value.fix


def test_events_are_append_only_in_sql(backend: Backend) -> None:
    with backend.open() as s:
        s.add_submission(rec("s1", 1.0))
        s.append_events([ev("s1", 0), ev("s1", 1)])
    for forgery in ("UPDATE events SET target = 'FORGED' WHERE attempt = 0", "DELETE FROM events"):
        with pytest.raises(Exception, match="append-only"):
            backend.sql(forgery)
    if backend.kind == "postgres":
        with pytest.raises(Exception, match="append-only"):
            backend.sql("TRUNCATE events")
    assert backend.sql("SELECT target FROM events ORDER BY id") == [("QUEUED",), ("QUEUED",)]


def test_batched_writes_readable_before_flush_and_durable_after(backend: Backend) -> None:
    s = backend.open(flush_interval_s=60)
    s.add_submission(rec("s1", 1.0))
    assert backend.count("submissions") == 1  # synchronous: visible to another connection at once
    s.append_events([ev("s1", i) for i in range(10)])
    s.put_log("s1", "a", 0, "tail", None)
    assert s.pending() == 11
    assert backend.count() == 0 and backend.count("logs") == 0  # queued, not yet written
    assert s.events("s1") == [ev("s1", i) for i in range(10)]  # but reads see them
    assert s.get_log("s1", "a") == [(0, "tail", None)]
    s.flush()
    assert s.pending() == 0
    assert backend.count() == 10 and backend.count("logs") == 1
    s.append_events([ev("s1", 10)])
    assert s.events("s1") == [ev("s1", i) for i in range(11)]  # committed rows then queued rows, in order
    s.close()
    assert not s._thread.is_alive()
    with pytest.raises(FabricError) as info:
        s.append_events([ev("s1", 11)])
    assert info.value.code == ErrorCode.STORE_UNAVAILABLE


def test_background_flusher_commits_within_interval(backend: Backend) -> None:
    with backend.open(flush_interval_s=0.01) as s:
        s.append_events([ev("s1", i) for i in range(7)])
        assert wait_for(lambda: backend.count() == 7)
        assert s.pending() == 0


def test_concurrent_appends_from_eight_threads_lose_nothing(backend: Backend) -> None:
    per_thread, batch = 2_000, 10
    with backend.open(flush_interval_s=0.005) as s:
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
    assert backend.count() == 8 * per_thread


def test_label_filter_and_before_paging(backend: Backend) -> None:
    with backend.open() as s:
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
        assert [r.submission_id for r in s.list_submissions(labels={"env": "prod'\""})] == ["odd"]
        assert s.list_submissions(labels={"env": "nope"}) == []
        assert [r.submission_id for r in s.list_submissions(limit=3, before=(10.0, ""))] == ["s09", "s08", "s07"]
        assert [r.submission_id for r in s.list_submissions(team="nobody")] == []
        assert [r.submission_id for r in s.list_submissions(search="s2")] == ["s24", "s23", "s22", "s21", "s20"]
        assert [r.submission_id for r in s.list_submissions(search="pip", limit=2)] == ["odd", "s24"]
        assert [r.submission_id for r in s.non_terminal_submissions()] == [f"s{i:02d}" for i in range(20)] + ["odd"]


def test_retention_deletes_a_submissions_data_but_keeps_its_audit_on_every_store(store: Any) -> None:
    # The registry's sweep calls this on whichever store FABRIC_STORE chose (MemoryStore once lacked it).
    store.add_submission(rec("s1", 1.0, state="SUCCEEDED"))
    store.add_submission(rec("s2", 2.0, state="SUCCEEDED"))
    store.append_events([ev("s1", i) for i in range(3)] + [ev("s2", 9)])
    store.put_log("s1", "a", 0, "x", None)
    store.put_log("s1", "a", 1, "x again", None)
    store.put_log("s1", "b", 0, "y", "/tmp/b.log")  # still queued when deleting: must go too
    store.put_log("s2", "a", 0, "z", None)
    assert store.delete_submission_data("s1") == {"submissions": 1, "logs": 3, "events_kept": 3}
    assert store.get_submission("s1") is None
    assert store.get_log("s1", "a") == [] and store.get_log("s1", "b") == []
    assert store.events("s1") == [ev("s1", i) for i in range(3)]
    assert [r.submission_id for r in store.list_submissions()] == ["s2"]
    assert store.get_log("s2", "a") == [(0, "z", None)]
    assert store.delete_submission_data("s1") == {"submissions": 0, "logs": 0, "events_kept": 3}


def test_read_only_store_raises_store_unavailable_and_writes_nothing(backend: Backend) -> None:
    with backend.open() as s:
        s.add_submission(rec("s1", 1.0))
    ro = backend.open(read_only=True, flush_interval_s=60)
    assert ro.get_submission("s1") == rec("s1", 1.0)  # type: ignore[attr-defined]  # reads still work
    for write in (lambda: ro.add_submission(rec("s2", 2.0)),  # type: ignore[attr-defined]
                  lambda: ro.set_state("s1", "FAILED")):  # type: ignore[attr-defined]
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
    with backend.open() as s:
        assert s.get_submission("s1").state == "RUNNING"  # type: ignore[attr-defined]
        assert s.get_submission("s2") is None  # type: ignore[attr-defined]
        assert s.events("s1") == [] and s.get_log("s1", "a") == []


def test_background_failure_is_kept_reraised_and_batch_retained(backend: Backend) -> None:
    s = backend.open(flush_interval_s=0.01)
    s.add_submission(rec("s1", 1.0))  # type: ignore[attr-defined]
    backend.fail_log_writes(True)
    s.append_events([ev("s1", 0)])
    s.put_log("s1", "a", 0, "x", None)
    assert wait_for(lambda: s._bg_error is not None)
    with pytest.raises(FabricError, match="simulated disk full") as info:
        s.set_state("s1", "SUCCEEDED")  # type: ignore[attr-defined]  # the next synchronous write reports it
    assert info.value.code == ErrorCode.STORE_UNAVAILABLE
    assert backend.count() == 0  # one transaction per batch: the event was not half-written either
    assert s.events("s1") == [ev("s1", 0)] and s.get_log("s1", "a") == [(0, "x", None)]
    backend.fail_log_writes(False)
    assert wait_for(lambda: s.pending() == 0)  # the flusher retries and, with the disk back, drains the queue
    s.flush()  # a successful retry clears the error: nothing was lost, so nothing is reported
    s.close()
    assert backend.count() == 1 and backend.count("logs") == 1


def test_export_events_parquet_round_trip(backend: Backend, tmp_path: Path) -> None:
    pq = pytest.importorskip("pyarrow.parquet")
    with backend.open(flush_interval_s=60) as s:
        s.add_submission(rec("s1", 1.0, team="ml"))  # type: ignore[attr-defined]
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


def test_hundred_thousand_events_are_group_committed(backend: Backend) -> None:
    with backend.open() as s:
        s.add_submission(rec("s1", 1.0))  # type: ignore[attr-defined]
        batch = [ev("s1", i) for i in range(100)]
        start = time.perf_counter()
        for _ in range(1_000):
            s.append_events(batch)
        s.flush()
        elapsed = time.perf_counter() - start
    print(f"\n{backend.kind}: 100,000 events appended and committed in {elapsed:.2f} s")
    assert backend.count() == 100_000
    assert elapsed < 20


# --- the pipeline catalogue (fabric/record/catalogue.py) ------------------------------------------------------

def _draft(pipeline: str, spec_hash: str, team: str | None = None, at: float = 1.0, **options: Any) -> Any:
    from fabric.record.catalogue import PipelineVersion

    return PipelineVersion(pipeline, 0, {"pipeline_id": pipeline, "h": spec_hash}, spec_hash, at, team,
                           {"max_active_runs": None, "overlap": "skip", **options})


def test_catalogue_numbers_immutable_versions_per_team(store: Any) -> None:
    one, created = store.add_pipeline_version(_draft("factors", "h1", at=1.0))
    assert (one.version, created, one.spec) == (1, True, {"pipeline_id": "factors", "h": "h1"})
    again, created = store.add_pipeline_version(_draft("factors", "h1", at=2.0))
    assert (again, created) == (one, False)  # the same spec and options again: no new version
    two, created = store.add_pipeline_version(_draft("factors", "h2", at=3.0))
    assert (two.version, created) == (2, True)
    three, _ = store.add_pipeline_version(_draft("factors", "h2", at=4.0, max_active_runs=1))
    assert three.version == 3 and three.options["max_active_runs"] == 1  # other options: a new version
    back, _ = store.add_pipeline_version(_draft("factors", "h1", at=5.0))
    assert back.version == 4  # going back to an older spec is a new version too
    theirs, _ = store.add_pipeline_version(_draft("factors", "x", team="ml"))
    assert theirs.version == 1 and theirs.team == "ml"  # each team has its own catalogue
    store.add_pipeline_version(_draft("alpha", "a"))
    assert [v.version for v in store.pipeline_versions(None, "factors")] == [4, 3, 2, 1]
    assert [(v.pipeline_id, v.version) for v in store.latest_pipelines(None)] == [("alpha", 1), ("factors", 4)]
    assert [(v.pipeline_id, v.team) for v in store.latest_pipelines("ml")] == [("factors", "ml")]
    assert store.pipeline_versions("ml", "alpha") == [] and store.pipeline_versions(None, "ghost") == []


def test_catalogue_survives_reopen_and_versions_cannot_be_rewritten(backend: Backend) -> None:
    with backend.open() as s:
        s.add_pipeline_version(_draft("factors", "h1", team="ml"))  # type: ignore[attr-defined]
    with backend.open() as s:
        [v] = s.pipeline_versions("ml", "factors")  # type: ignore[attr-defined]
        assert (v.version, v.spec_hash, v.team) == (1, "h1", "ml")
    with pytest.raises(Exception, match="immutable"):
        backend.sql("UPDATE pipelines SET spec_hash = 'forged'")


def test_schedules_keep_their_last_tick_which_only_moves_forward(store: Any) -> None:
    from fabric.record.catalogue import ScheduleRecord

    made = store.put_schedule(ScheduleRecord("factors", "nightly", {"cron": "0 6 * * *"}, 10.0, "quant"))
    assert (made.last_tick, made.created_at, made.team) == (None, 10.0, "quant")
    store.mark_tick("quant", "factors", "nightly", 100.0)
    store.mark_tick("quant", "factors", "nightly", 50.0)  # an older tick never moves it back
    changed = store.put_schedule(ScheduleRecord("factors", "nightly", {"cron": "0 7 * * *"}, 99.0, "quant"))
    assert (changed.spec, changed.last_tick, changed.created_at) == ({"cron": "0 7 * * *"}, 100.0, 10.0)
    store.put_schedule(ScheduleRecord("factors", "hourly", {"cron": "0 * * * *"}, 11.0, "quant"))
    store.put_schedule(ScheduleRecord("other", "nightly", {"cron": "0 6 * * *"}, 12.0, None))
    assert [s.name for s in store.schedules("quant", "factors")] == ["hourly", "nightly"]
    assert [s.pipeline_id for s in store.schedules(None)] == ["other"]
    assert len(store.schedules(None, every_team=True)) == 3
    store.mark_tick("nobody", "factors", "nightly", 1.0)  # no such schedule: nothing happens
    assert store.schedules("nobody") == []


def test_backfills_are_made_once_and_end_once(store: Any) -> None:
    from fabric.record.backfills import BackfillRecord

    made, created = store.add_backfill(BackfillRecord("bf-1", "factors", {"start": "2024-01-01"}, 10.0, "quant",
                                                      request_hash="h1"))
    assert created and (made.state, made.team, made.spec) == ("RUNNING", "quant", {"start": "2024-01-01"})
    again, created = store.add_backfill(BackfillRecord("bf-1", "factors", {"start": "2099-01-01"}, 11.0, "quant",
                                                       request_hash="h2"))
    assert not created and (again.request_hash, again.created_at) == ("h1", 10.0)  # the first one stays
    store.add_backfill(BackfillRecord("bf-1", "factors", {}, 12.0, None, request_hash="h3"))  # another team's key
    store.add_backfill(BackfillRecord("bf-2", "other", {}, 13.0, "quant", request_hash="h4"))
    assert [b.backfill_id for b in store.backfills("quant")] == ["bf-2", "bf-1"]  # newest first
    assert [b.backfill_id for b in store.backfills("quant", "factors")] == ["bf-1"]
    assert [b.team for b in store.backfills(None)] == [None]
    assert len(store.backfills(None, every_team=True, state="RUNNING")) == 3
    assert store.set_backfill_state("quant", "bf-1", "CANCELLED")
    assert not store.set_backfill_state("quant", "bf-1", "SUCCEEDED")  # an ended backfill stays ended
    assert not store.set_backfill_state("nobody", "bf-1", "CANCELLED")
    assert [b.state for b in store.backfills("quant", "factors")] == ["CANCELLED"]
    assert [b.backfill_id for b in store.backfills(None, every_team=True, state="RUNNING")] == ["bf-2", "bf-1"]


def test_a_served_name_has_one_owner_on_every_store(store: Any) -> None:
    from fabric.spec.policy import ServedName

    assert store.claim_served("xs", ServedName("a", 1.0, 2), 1.0) == (ServedName("a", 1.0, 2), True)
    assert store.claim_served("xs", ServedName("b", 9.0, 9), 2.0) == (ServedName("a", 1.0, 2), False)  # the first
    assert not store.update_served("xs", ServedName("b", 0.5, 1))  # not b's: unchanged
    assert not store.release_served("xs", "b")
    assert store.served_names() == {"xs": ServedName("a", 1.0, 2)}
    assert store.update_served("xs", ServedName("a", 0.5, 1))
    store.claim_served("ys", ServedName("b"), 3.0)
    assert store.served_names(["xs", "zz"]) == {"xs": ServedName("a", 0.5, 1)} and store.served_names([]) == {}
    assert store.release_served("xs", "a")
    assert store.served_names() == {"ys": ServedName("b", 0.0, 0)}
