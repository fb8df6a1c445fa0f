"""A durable Store on PostgreSQL (`FABRIC_STORE=postgresql://...`): the SQLite store's contract, schema
versions and migrations, an append-only audit table enforced by triggers, and group-committed events and logs.

The record is shared by whichever registry holds the store's lease (fabric/record/lease.py), so a new cluster
can take over a store on a database that outlives the old one. psycopg 3 is imported only when a PostgreSQL
store is opened (the `postgres` extra).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

from fabric.errors import ErrorCode, FabricError
from fabric.record.backfills import POSTGRES_BACKFILLS, SqlBackfills
from fabric.record.batched import EVENT_COLUMNS, BatchedStore, LogItem, event_row
from fabric.record.catalogue import POSTGRES_SCHEDULES, POSTGRES_TABLES, SqlCatalogue
from fabric.record.page import Key
from fabric.record.served import POSTGRES_SERVED, SqlServed
from fabric.record.store import Event, Store, SubmissionRecord

if TYPE_CHECKING:
    import psycopg

SCHEMA_VERSION = 5
_MIGRATION_LOCK = 0x46414252_4D494752  # "FABRMIGR": one opener migrates at a time (pg_advisory_xact_lock)

# Each migration takes the schema from version n-1 to n; all statements of one open run in one transaction.
MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """CREATE TABLE submissions (
            seq BIGSERIAL UNIQUE, submission_id TEXT PRIMARY KEY, pipeline_id TEXT NOT NULL, spec TEXT NOT NULL,
            runtime_params TEXT NOT NULL, plan_hash TEXT NOT NULL, request_hash TEXT NOT NULL,
            created_at DOUBLE PRECISION NOT NULL, team TEXT, labels JSONB NOT NULL DEFAULT '{}'::jsonb,
            state TEXT NOT NULL, runtime_env TEXT NOT NULL DEFAULT '{}')""",
        "CREATE INDEX submissions_state ON submissions (state, created_at)",
        "CREATE INDEX submissions_created_at ON submissions (created_at)",
        """CREATE TABLE events (
            id BIGSERIAL PRIMARY KEY, submission_id TEXT NOT NULL, node_id TEXT, source TEXT NOT NULL,
            target TEXT NOT NULL, at DOUBLE PRECISION NOT NULL, attempt INTEGER NOT NULL DEFAULT 0,
            reason TEXT NOT NULL DEFAULT '', actor TEXT, team TEXT)""",
        "CREATE INDEX events_submission ON events (submission_id, id)",
        # The audit log is append-only in SQL too: retention deletes submissions and logs, never events.
        """CREATE FUNCTION fabric_events_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN RAISE EXCEPTION 'events are append-only: % is not allowed', TG_OP; END $$""",
        """CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE ON events
            FOR EACH ROW EXECUTE FUNCTION fabric_events_append_only()""",
        """CREATE TRIGGER events_no_truncate BEFORE TRUNCATE ON events
            FOR EACH STATEMENT EXECUTE FUNCTION fabric_events_append_only()""",
        """CREATE TABLE logs (
            submission_id TEXT NOT NULL, node_id TEXT NOT NULL, attempt INTEGER NOT NULL, text TEXT NOT NULL,
            path TEXT, PRIMARY KEY (submission_id, node_id, attempt))""",
        # The cache index (fabric/record/cache.py: PostgresCacheIndex) lives in the same database.
        """CREATE TABLE cache (key TEXT PRIMARY KEY, submission_id TEXT NOT NULL, node_id TEXT NOT NULL,
            outs TEXT NOT NULL, digests TEXT NOT NULL, created_at DOUBLE PRECISION)""",
        # Who holds the lease (fabric/record/lease.py): one row, rewritten by each new holder.
        """CREATE TABLE registry_lease (id INTEGER PRIMARY KEY CHECK (id = 1), holder TEXT NOT NULL)""",
    ),
    # v2: the pipeline catalogue's immutable versions (fabric/record/catalogue.py).
    2: POSTGRES_TABLES,
    # v3: pipeline schedules and the last tick each handled (fabric/record/catalogue.py).
    3: POSTGRES_SCHEDULES,
    # v4: backfills, each with its dates, params and state (fabric/record/backfills.py).
    4: POSTGRES_BACKFILLS,
    # v5: who owns each served model name (fabric/record/served.py).
    5: POSTGRES_SERVED,
}

_SUBMISSION_COLUMNS = ("submission_id, pipeline_id, spec, runtime_params, plan_hash, request_hash, created_at, "
                       "team, labels, state, runtime_env")
_UPSERT_SUBMISSION = (
    f"INSERT INTO submissions ({_SUBMISSION_COLUMNS}) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb, %s, %s) "
    "ON CONFLICT (submission_id) DO UPDATE SET " + ", ".join(
        f"{c} = excluded.{c}" for c in _SUBMISSION_COLUMNS.split(", ")[1:]))
_INSERT_EVENT = ("INSERT INTO events (submission_id, node_id, source, target, at, attempt, reason, actor, team) "
                 "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, "
                 "COALESCE(%s, (SELECT team FROM submissions WHERE submission_id = %s)))")
_UPSERT_LOG = ("INSERT INTO logs (submission_id, node_id, attempt, text, path) VALUES (%s, %s, %s, %s, %s) "
               "ON CONFLICT (submission_id, node_id, attempt) DO UPDATE SET text = excluded.text, path = excluded.path")


def is_postgres_url(value: str) -> bool:
    return value.startswith(("postgresql://", "postgres://"))


def redact(url: str) -> str:
    """The URL without its password: safe for errors and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:***@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def unavailable(url: str, cause: BaseException | str) -> FabricError:
    return FabricError(
        f"the store at {redact(url)} is unavailable: {cause}", code=ErrorCode.STORE_UNAVAILABLE, where=redact(url),
        fix="check that PostgreSQL is up and reachable at that URL, that the database exists and that the user may "
            "create tables in it (`pip install 'fabric-ray[postgres]'` for the driver); nothing acknowledged was lost")


def connect(url: str, *, read_only: bool = False) -> psycopg.Connection[Any]:
    """An autocommit connection (transactions are explicit), or STORE_UNAVAILABLE naming the URL."""
    try:
        import psycopg
    except ImportError as exc:
        raise unavailable(url, "the psycopg driver is not installed") from exc
    try:
        conn = psycopg.connect(url, autocommit=True, connect_timeout=10, application_name="fabric")
        if read_only:
            conn.execute("SET default_transaction_read_only = on")
        return conn
    except psycopg.Error as exc:
        raise unavailable(url, exc) from exc


def _record(row: tuple[Any, ...]) -> SubmissionRecord:
    sid, pipeline_id, spec, runtime_params, plan_hash, request_hash, created_at, team, labels, state, env = row
    return SubmissionRecord(sid, pipeline_id, json.loads(spec), json.loads(runtime_params), plan_hash, request_hash,
                            created_at, team, dict(labels), state, json.loads(env))


class PostgresStore(SqlCatalogue, SqlBackfills, SqlServed, BatchedStore):
    """A thread-safe, durable Store in one PostgreSQL database (one connection owned by the store, reopened
    after it breaks)."""

    _P = "%s"

    def __init__(self, url: str, *, flush_interval_s: float = 0.05, read_only: bool = False) -> None:
        self.url = url
        self.read_only = read_only
        self._init_batching(flush_interval_s, "postgres")
        self._conn = connect(url, read_only=read_only)
        try:
            self._migrate()
        except BaseException:
            self._conn.close()
            raise
        self._thread.start()

    # -- schema ----------------------------------------------------------------------------------

    def schema_version(self) -> int:
        with self._db_lock, self._guard() as conn:
            if conn.execute("SELECT to_regclass('schema_version')").fetchone() == (None,):
                return 0
            row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
        return int(row[0] or 0) if row else 0

    def _migrate(self) -> None:
        version = self.schema_version()
        if version > SCHEMA_VERSION:
            raise FabricError(
                f"the store at {redact(self.url)} has schema version {version}, newer than this fabric knows "
                f"({SCHEMA_VERSION})", code=ErrorCode.STORE_UNAVAILABLE, where=redact(self.url),
                fix="upgrade fabric to a version that knows this schema, or point FABRIC_STORE at another database")
        if version == SCHEMA_VERSION:
            return
        if self.read_only:
            raise self._unavailable(f"schema version {version} needs migrating to {SCHEMA_VERSION}, which a "
                                    "read-only store cannot do")
        with self._txn() as conn:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
            current = int(row[0] or 0) if row else 0  # another opener may have migrated while we waited
            for target in range(current + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[target]:
                    conn.execute(statement)
            conn.execute("DELETE FROM schema_version")
            conn.execute("INSERT INTO schema_version (version) VALUES (%s)", (max(current, SCHEMA_VERSION),))

    # -- connection, transactions and errors ----------------------------------------------------------

    @contextmanager
    def _guard(self) -> Iterator[psycopg.Connection[Any]]:
        """The live connection (reopened if it broke); any driver failure is STORE_UNAVAILABLE."""
        import psycopg

        if self._conn.closed and self._accepting:
            self._conn = connect(self.url, read_only=self.read_only)
        try:
            yield self._conn
        except psycopg.Error as exc:
            raise self._unavailable(exc) from exc

    @contextmanager
    def _txn(self) -> Iterator[psycopg.Connection[Any]]:
        with self._db_lock, self._guard() as conn, conn.transaction():
            yield conn

    def _unavailable(self, cause: BaseException | str) -> FabricError:
        return unavailable(self.url, cause)

    # -- submissions (synchronous: committed before returning) -------------------------------------

    def _insert_submissions(self, records: list[SubmissionRecord]) -> None:
        with self._txn() as conn, conn.cursor() as cursor:
            cursor.executemany(_UPSERT_SUBMISSION, [
                (r.submission_id, r.pipeline_id, json.dumps(r.spec), json.dumps(r.runtime_params), r.plan_hash,
                 r.request_hash, r.created_at, r.team, json.dumps(r.labels), r.state, json.dumps(r.runtime_env))
                for r in records])

    def set_state(self, submission_id: str, state: str) -> None:
        self._raise_background_error()
        with self._txn() as conn:
            updated = conn.execute("UPDATE submissions SET state = %s WHERE submission_id = %s",
                                   (state, submission_id)).rowcount
        if updated == 0:
            raise KeyError(submission_id)  # as MemoryStore does

    def get_submission(self, submission_id: str) -> SubmissionRecord | None:
        with self._db_lock, self._guard() as conn:
            row = conn.execute(f"SELECT {_SUBMISSION_COLUMNS} FROM submissions WHERE submission_id = %s",
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
            where.append("team = %s")
            args.append(team)
        if state is not None:
            where.append("state = %s")
            args.append(state)
        if before is not None:
            # COLLATE "C": ids compare bytewise, as on SQLite, whatever the database's locale.
            where.append('(created_at, submission_id COLLATE "C") < (%s, %s)')
            args += [before[0], before[1]]
        if search:
            where.append("(strpos(pipeline_id, %s) > 0 OR strpos(submission_id, %s) > 0)")
            args += [search, search]
        if labels:
            where.append("labels @> %s::jsonb")  # every given key with that string value
            args.append(json.dumps(labels))
        sql = f"SELECT {_SUBMISSION_COLUMNS} FROM submissions"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += ' ORDER BY created_at DESC, submission_id COLLATE "C" DESC LIMIT %s'
        with self._db_lock, self._guard() as conn:
            rows = conn.execute(sql, (*args, limit)).fetchall()
        return [_record(row) for row in rows]

    def non_terminal_submissions(self) -> list[SubmissionRecord]:
        """Submissions still RUNNING (e.g. after a crash), oldest first: what recovery must pick up."""
        with self._db_lock, self._guard() as conn:
            rows = conn.execute(f"SELECT {_SUBMISSION_COLUMNS} FROM submissions WHERE state = 'RUNNING' "
                                "ORDER BY created_at, seq").fetchall()
        return [_record(row) for row in rows]

    def delete_submission_data(self, submission_id: str) -> dict[str, int]:
        """Remove a submission's row and logs for retention; its events (the audit log) always stay."""
        self.flush()
        with self._txn() as conn:
            logs = conn.execute("DELETE FROM logs WHERE submission_id = %s", (submission_id,)).rowcount
            subs = conn.execute("DELETE FROM submissions WHERE submission_id = %s", (submission_id,)).rowcount
            row = conn.execute("SELECT COUNT(*) FROM events WHERE submission_id = %s", (submission_id,)).fetchone()
        return {"submissions": subs, "logs": logs, "events_kept": int(row[0]) if row else 0}

    # -- what the group commit (BatchedStore) writes and reads ----------------------------------------

    def _write_batch(self, events: list[Event], logs: list[LogItem]) -> None:
        with self._txn() as conn, conn.cursor() as cur:
            if events:
                cur.executemany(_INSERT_EVENT, [event_row(e) for e in events])
            if logs:
                cur.executemany(_UPSERT_LOG, logs)

    def _select_events(self, submission_id: str) -> list[Event]:
        with self._guard() as conn:
            rows = conn.execute("SELECT submission_id, node_id, source, target, at, attempt, reason FROM events "
                                "WHERE submission_id = %s ORDER BY id", (submission_id,)).fetchall()
        return [Event(*row) for row in rows]

    def _select_logs(self, submission_id: str, node_id: str) -> list[tuple[int, str, str | None]]:
        with self._guard() as conn:
            return conn.execute("SELECT attempt, text, path FROM logs WHERE submission_id = %s AND node_id = %s",
                                (submission_id, node_id)).fetchall()

    def _select_event_rows(self, submission_id: str | None) -> list[tuple[Any, ...]]:
        sql = f"SELECT {', '.join(EVENT_COLUMNS)} FROM events"
        args: tuple[str, ...] = ()
        if submission_id is not None:
            sql, args = sql + " WHERE submission_id = %s", (submission_id,)
        with self._guard() as conn:
            return conn.execute(sql + " ORDER BY id", args).fetchall()

    def _close_connection(self) -> None:
        self._conn.close()

    def __enter__(self) -> PostgresStore:
        return self


if TYPE_CHECKING:  # mypy proves that this store is a Store: a missing or changed method fails `mypy fabric`
    _postgres_is_a_store: Store = PostgresStore("postgresql://localhost/fabric")
