"""A durable Store on SQLite: WAL, an append-only audit log, and group-committed events and logs.

`add_submission` and `set_state` are committed before they return. `append_events` and `put_log`
are queued and group-committed by a background thread (fabric/record/batched.py).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fabric.errors import ErrorCode, FabricError
from fabric.record.backfills import SQLITE_BACKFILLS, SqlBackfills
from fabric.record.batched import EVENT_COLUMNS, BatchedStore, LogItem, event_row
from fabric.record.catalogue import SQLITE_SCHEDULES, SQLITE_TABLES, SqlCatalogue
from fabric.record.page import Key
from fabric.record.served import SQLITE_SERVED, SqlServed
from fabric.record.store import Event, Store, SubmissionRecord

SCHEMA_VERSION = 6

# Each migration takes the schema from version n-1 to n; statements run in one transaction.
_MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE submissions (
            submission_id TEXT PRIMARY KEY, pipeline_id TEXT NOT NULL, spec TEXT NOT NULL,
            runtime_params TEXT NOT NULL, plan_hash TEXT NOT NULL, request_hash TEXT NOT NULL,
            created_at REAL NOT NULL, team TEXT, labels TEXT NOT NULL DEFAULT '{}', state TEXT NOT NULL)""",
        "CREATE INDEX submissions_state ON submissions (state, created_at)",
        "CREATE INDEX submissions_created_at ON submissions (created_at)",
        """CREATE TABLE events (
            id INTEGER PRIMARY KEY AUTOINCREMENT, submission_id TEXT NOT NULL, node_id TEXT,
            source TEXT NOT NULL, target TEXT NOT NULL, at REAL NOT NULL, attempt INTEGER NOT NULL DEFAULT 0,
            reason TEXT NOT NULL DEFAULT '', actor TEXT, team TEXT)""",
        "CREATE INDEX events_submission ON events (submission_id, id)",
        """CREATE TRIGGER events_no_update BEFORE UPDATE ON events
            BEGIN SELECT RAISE(ABORT, 'events are append-only: UPDATE is not allowed'); END""",
        """CREATE TRIGGER events_no_delete BEFORE DELETE ON events
            BEGIN SELECT RAISE(ABORT, 'events are append-only: DELETE is not allowed'); END""",
        """CREATE TABLE logs (
            submission_id TEXT NOT NULL, node_id TEXT NOT NULL, attempt INTEGER NOT NULL, text TEXT NOT NULL,
            path TEXT, PRIMARY KEY (submission_id, node_id, attempt))""",
    ),
    # v2: the runtime_env a submission was started with, so that a restarted registry can resume it.
    2: ("ALTER TABLE submissions ADD COLUMN runtime_env TEXT NOT NULL DEFAULT '{}'",),
    # v3: the pipeline catalogue's immutable versions (fabric/record/catalogue.py).
    3: SQLITE_TABLES,
    # v4: pipeline schedules and the last tick each handled (fabric/record/catalogue.py).
    4: SQLITE_SCHEDULES,
    # v5: backfills, each with its dates, params and state (fabric/record/backfills.py).
    5: SQLITE_BACKFILLS,
    # v6: who owns each served model name (fabric/record/served.py).
    6: SQLITE_SERVED,
}

_SUBMISSION_COLUMNS = ("submission_id, pipeline_id, spec, runtime_params, plan_hash, request_hash, created_at, "
                       "team, labels, state, runtime_env")
_INSERT_EVENT = ("INSERT INTO events (submission_id, node_id, source, target, at, attempt, reason, actor, team) "
                 "VALUES (?, ?, ?, ?, ?, ?, ?, ?, COALESCE(?, (SELECT team FROM submissions WHERE submission_id = ?)))")
_UPSERT_LOG = ("INSERT INTO logs (submission_id, node_id, attempt, text, path) VALUES (?, ?, ?, ?, ?) "
               "ON CONFLICT (submission_id, node_id, attempt) DO UPDATE SET text = excluded.text, path = excluded.path")

def _unavailable(path: Path, cause: BaseException | str) -> FabricError:
    return FabricError(
        f"the store at {path} is unavailable: {cause}", code=ErrorCode.STORE_UNAVAILABLE, where=str(path),
        fix="check that the store file and its directory exist and are writable, that the disk has space, and "
            "that no other process holds a long write lock; nothing was lost from what was acknowledged")


def _record(row: sqlite3.Row | tuple[Any, ...]) -> SubmissionRecord:
    sid, pipeline_id, spec, runtime_params, plan_hash, request_hash, created_at, team, labels, state, env = row
    return SubmissionRecord(sid, pipeline_id, json.loads(spec), json.loads(runtime_params), plan_hash, request_hash,
                            created_at, team, json.loads(labels), state, json.loads(env))


class SqliteStore(SqlCatalogue, SqlBackfills, SqlServed, BatchedStore):
    """A thread-safe, durable Store in one SQLite file (WAL mode, one connection owned by the store)."""

    def __init__(self, path: str | Path, *, flush_interval_s: float = 0.05, read_only: bool = False,
                 busy_timeout_s: float = 5.0) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self._init_batching(flush_interval_s, self.path.name)
        try:
            if read_only:
                uri = self.path.resolve().as_uri() + "?mode=ro"
                self._conn = sqlite3.connect(uri, uri=True, timeout=busy_timeout_s, check_same_thread=False,
                                             isolation_level=None)
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._conn = sqlite3.connect(self.path, timeout=busy_timeout_s, check_same_thread=False,
                                             isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise _unavailable(self.path, exc) from exc
        try:
            self._conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
            if not read_only:
                self._conn.execute("PRAGMA journal_mode = WAL")
                # FULL: a commit is on disk before it is acknowledged, power loss included (batches keep it cheap).
                self._conn.execute("PRAGMA synchronous = FULL")
            self._migrate()
        except BaseException:
            self._conn.close()
            raise
        self._thread.start()

    # -- schema ----------------------------------------------------------------------------------

    def schema_version(self) -> int:
        with self._db_lock, self._guard():
            table = self._conn.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_version'").fetchone()
            if table is None:
                return 0
            row = self._conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
            return int(row[0] or 0)

    def _migrate(self) -> None:
        version = self.schema_version()
        if version > SCHEMA_VERSION:
            raise FabricError(
                f"the store at {self.path} has schema version {version}, newer than this fabric knows "
                f"({SCHEMA_VERSION})", code=ErrorCode.STORE_UNAVAILABLE, where=str(self.path),
                fix="upgrade fabric to a version that knows this schema, or point at another store file")
        if version == SCHEMA_VERSION:
            return
        if self.read_only:
            raise _unavailable(self.path, f"schema version {version} needs migrating to {SCHEMA_VERSION}, "
                                          "which a read-only store cannot do")
        with self._txn() as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            for target in range(version + 1, SCHEMA_VERSION + 1):
                for statement in _MIGRATIONS[target]:
                    conn.execute(statement)
            conn.execute("DELETE FROM schema_version")
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))

    # -- transactions and errors -------------------------------------------------------------------

    @contextmanager
    def _guard(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as exc:
            raise _unavailable(self.path, exc) from exc

    @contextmanager
    def _txn(self) -> Iterator[sqlite3.Connection]:
        """One write transaction under the connection lock; any SQLite failure is STORE_UNAVAILABLE."""
        with self._db_lock, self._guard():
            self._conn.execute("BEGIN IMMEDIATE")  # on a closed connection: ProgrammingError, mapped
            try:
                yield self._conn
                self._conn.execute("COMMIT")
            except BaseException:
                if self._conn.in_transaction:
                    try:
                        self._conn.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                raise

    def _unavailable(self, cause: BaseException | str) -> FabricError:
        return _unavailable(self.path, cause)

    # -- submissions (synchronous: committed before returning) -------------------------------------

    def _insert_submissions(self, records: list[SubmissionRecord]) -> None:
        with self._txn() as conn:
            conn.executemany(
                f"INSERT OR REPLACE INTO submissions ({_SUBMISSION_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(r.submission_id, r.pipeline_id, json.dumps(r.spec), json.dumps(r.runtime_params), r.plan_hash,
                  r.request_hash, r.created_at, r.team, json.dumps(r.labels), r.state, json.dumps(r.runtime_env))
                 for r in records])

    def set_state(self, submission_id: str, state: str) -> None:
        self._raise_background_error()
        with self._txn() as conn:
            updated = conn.execute("UPDATE submissions SET state = ? WHERE submission_id = ?",
                                   (state, submission_id)).rowcount
        if updated == 0:
            raise KeyError(submission_id)  # as MemoryStore does

    def get_submission(self, submission_id: str) -> SubmissionRecord | None:
        with self._db_lock, self._guard():
            row = self._conn.execute(f"SELECT {_SUBMISSION_COLUMNS} FROM submissions WHERE submission_id = ?",
                                     (submission_id,)).fetchone()
        return None if row is None else _record(row)

    def list_submissions(self, state: str | None = None, limit: int = 50, labels: dict[str, str] | None = None,
                         before: Key | None = None, team: str | None = None,
                         search: str | None = None) -> list[SubmissionRecord]:
        """Newest first by (created_at, submission_id); `labels` must all match; `before` is the last key of
        the previous page (exclusive); `team` filters; `search` is a substring of the pipeline or the id."""
        where: list[str] = []
        args: list[Any] = []
        if team is not None:
            where.append("team = ?")
            args.append(team)
        if state is not None:
            where.append("state = ?")
            args.append(state)
        if before is not None:
            where.append("(created_at, submission_id) < (?, ?)")
            args += [before[0], before[1]]
        if search:
            where.append("(instr(pipeline_id, ?) > 0 OR instr(submission_id, ?) > 0)")
            args += [search, search]
        for key, value in (labels or {}).items():
            where.append("EXISTS (SELECT 1 FROM json_each(submissions.labels) WHERE key = ? AND value = ?)")
            args += [key, value]
        sql = f"SELECT {_SUBMISSION_COLUMNS} FROM submissions"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC, submission_id DESC LIMIT ?"
        with self._db_lock, self._guard():
            rows = self._conn.execute(sql, (*args, limit)).fetchall()
        return [_record(row) for row in rows]

    def non_terminal_submissions(self) -> list[SubmissionRecord]:
        """Submissions still RUNNING (e.g. after a crash), oldest first: what recovery must pick up."""
        with self._db_lock, self._guard():
            rows = self._conn.execute(f"SELECT {_SUBMISSION_COLUMNS} FROM submissions WHERE state = 'RUNNING' "
                                      "ORDER BY created_at, rowid").fetchall()
        return [_record(row) for row in rows]

    def delete_submission_data(self, submission_id: str) -> dict[str, int]:
        """Remove a submission's row and logs for retention; its events (the audit log) always stay."""
        self.flush()
        with self._txn() as conn:
            logs = conn.execute("DELETE FROM logs WHERE submission_id = ?", (submission_id,)).rowcount
            subs = conn.execute("DELETE FROM submissions WHERE submission_id = ?", (submission_id,)).rowcount
            kept = conn.execute("SELECT COUNT(*) FROM events WHERE submission_id = ?", (submission_id,)).fetchone()[0]
        return {"submissions": subs, "logs": logs, "events_kept": kept}

    # -- what the group commit (BatchedStore) writes and reads ----------------------------------------

    def _write_batch(self, events: list[Event], logs: list[LogItem]) -> None:
        with self._txn() as conn:
            conn.executemany(_INSERT_EVENT, [event_row(e) for e in events])
            conn.executemany(_UPSERT_LOG, logs)

    def _select_events(self, submission_id: str) -> list[Event]:
        with self._guard():
            rows = self._conn.execute(
                "SELECT submission_id, node_id, source, target, at, attempt, reason FROM events "
                "WHERE submission_id = ? ORDER BY id", (submission_id,)).fetchall()
        return [Event(*row) for row in rows]

    def _select_logs(self, submission_id: str, node_id: str) -> list[tuple[int, str, str | None]]:
        with self._guard():
            return self._conn.execute("SELECT attempt, text, path FROM logs WHERE submission_id = ? AND node_id = ?",
                                      (submission_id, node_id)).fetchall()

    def _select_event_rows(self, submission_id: str | None) -> list[tuple[Any, ...]]:
        sql = f"SELECT {', '.join(EVENT_COLUMNS)} FROM events"
        args: tuple[str, ...] = ()
        if submission_id is not None:
            sql, args = sql + " WHERE submission_id = ?", (submission_id,)
        with self._guard():
            return self._conn.execute(sql + " ORDER BY id", args).fetchall()

    def _close_connection(self) -> None:
        self._conn.close()

    def __enter__(self) -> SqliteStore:
        return self


if TYPE_CHECKING:  # mypy proves that this store is a Store: a missing or changed method fails `mypy fabric`
    _sqlite_is_a_store: Store = SqliteStore(Path("fabric.db"))
