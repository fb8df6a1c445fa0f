"""Backfills as stored: each one's request (dates, params, the version it runs) and its state, per team, on every
store; its runs are submissions labelled with its id."""

from __future__ import annotations

import json
import threading
from contextlib import AbstractContextManager
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from fabric.record.catalogue import NO_TEAM


@dataclass(frozen=True)
class BackfillRecord:
    """One backfill: its spec (fabric.spec.backfills, with the version and spec hash it was pinned to) and state."""

    backfill_id: str
    pipeline_id: str
    spec: dict[str, Any]
    created_at: float
    team: str | None = None
    state: str = "RUNNING"  # RUNNING until every date is done (SUCCEEDED, FAILED) or it is CANCELLED
    request_hash: str = ""


_TABLE = """CREATE TABLE backfills (
        team TEXT NOT NULL, backfill_id TEXT NOT NULL, pipeline_id TEXT NOT NULL, spec TEXT NOT NULL,
        request_hash TEXT NOT NULL, state TEXT NOT NULL, created_at {real} NOT NULL,
        PRIMARY KEY (team, backfill_id))"""
SQLITE_BACKFILLS = (_TABLE.format(real="REAL"),)
POSTGRES_BACKFILLS = (_TABLE.format(real="DOUBLE PRECISION"),)
_COLUMNS = "team, backfill_id, pipeline_id, spec, request_hash, state, created_at"


def _row(row: tuple[Any, ...] | Any) -> BackfillRecord:
    team, backfill_id, pipeline_id, spec, request_hash, state, created_at = row
    return BackfillRecord(backfill_id, pipeline_id, json.loads(spec), float(created_at), team or None, state,
                          request_hash)


class SqlBackfills:
    """The backfill methods for a SQL store with `_txn()` and a placeholder style `_P` (as SqlCatalogue)."""

    _P = "?"

    if TYPE_CHECKING:
        def _txn(self) -> AbstractContextManager[Any]: ...

    def add_backfill(self, record: BackfillRecord) -> tuple[BackfillRecord, bool]:
        """Record a new backfill, or return the one already under its id (True when created)."""
        p, team = self._P, record.team or NO_TEAM
        with self._txn() as conn:
            cursor = conn.execute(f"INSERT INTO backfills ({_COLUMNS}) VALUES ({', '.join([p] * 7)}) "
                         "ON CONFLICT (team, backfill_id) DO NOTHING",
                         (team, record.backfill_id, record.pipeline_id, json.dumps(record.spec), record.request_hash,
                          record.state, record.created_at))
            created = bool(cursor.rowcount)
            row = conn.execute(f"SELECT {_COLUMNS} FROM backfills WHERE team = {p} AND backfill_id = {p}",
                               (team, record.backfill_id)).fetchone()
        return _row(row), created

    def backfills(self, team: str | None, pipeline_id: str | None = None, *, every_team: bool = False,
                  state: str | None = None) -> list[BackfillRecord]:
        """The team's backfills (of one pipeline, in one state), or every team's; newest first."""
        p, where, args = self._P, [], []
        for column, value in (("team", None if every_team else (team or NO_TEAM)), ("pipeline_id", pipeline_id),
                              ("state", state)):
            if value is not None:
                where.append(f"{column} = {p}")
                args.append(value)
        sql = f"SELECT {_COLUMNS} FROM backfills" + (" WHERE " + " AND ".join(where) if where else "")
        with self._txn() as conn:
            rows = conn.execute(sql + " ORDER BY created_at DESC, backfill_id", tuple(args)).fetchall()
        return [_row(r) for r in rows]

    def set_backfill_state(self, team: str | None, backfill_id: str, state: str) -> bool:
        """Move a RUNNING backfill to `state` (an ended one stays ended); True when it moved."""
        p = self._P
        with self._txn() as conn:
            cursor = conn.execute(f"UPDATE backfills SET state = {p} WHERE team = {p} AND backfill_id = {p} "
                                  "AND state = 'RUNNING'", (state, team or NO_TEAM, backfill_id))
            return bool(cursor.rowcount)


class MemoryBackfills:
    """The backfill methods in memory (MemoryStore)."""

    def __init__(self) -> None:
        self._backfill_lock = threading.Lock()
        self._backfills: dict[tuple[str, str], BackfillRecord] = {}

    def add_backfill(self, record: BackfillRecord) -> tuple[BackfillRecord, bool]:
        key = (record.team or NO_TEAM, record.backfill_id)
        with self._backfill_lock:
            if key in self._backfills:
                return self._backfills[key], False
            self._backfills[key] = record
            return record, True

    def backfills(self, team: str | None, pipeline_id: str | None = None, *, every_team: bool = False,
                  state: str | None = None) -> list[BackfillRecord]:
        with self._backfill_lock:
            found = [r for (t, _), r in self._backfills.items()
                     if (every_team or t == (team or NO_TEAM)) and pipeline_id in (None, r.pipeline_id)
                     and state in (None, r.state)]
        return sorted(found, key=lambda r: (-r.created_at, r.backfill_id))

    def set_backfill_state(self, team: str | None, backfill_id: str, state: str) -> bool:
        key = (team or NO_TEAM, backfill_id)
        with self._backfill_lock:
            old = self._backfills.get(key)
            if old is None or old.state != "RUNNING":
                return False
            self._backfills[key] = replace(old, state=state)
            return True
