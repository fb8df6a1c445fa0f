"""The pipeline catalogue's record: immutable, numbered versions of registered specs and their schedules (with
the last tick each fired), per team, on every store."""

from __future__ import annotations

import json
import threading
from contextlib import AbstractContextManager
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

NO_TEAM = ""  # the key of pipelines registered without a team (a local registry, `fabric run`)


@dataclass(frozen=True)
class PipelineVersion:
    """One registered version of a pipeline: the spec as registered, its hash, and the run options."""

    pipeline_id: str
    version: int
    spec: dict[str, Any]
    spec_hash: str
    created_at: float
    team: str | None = None
    options: dict[str, Any] = field(default_factory=dict)  # max_active_runs, overlap (fabric.spec.catalogue)

    def to_dict(self, with_spec: bool = False) -> dict[str, Any]:
        data = {"pipeline_id": self.pipeline_id, "version": self.version, "spec_hash": self.spec_hash,
                "created_at": self.created_at, "team": self.team, **self.options}
        return {**data, "spec": self.spec} if with_spec else data


@dataclass(frozen=True)
class ScheduleRecord:
    """One schedule of a pipeline as stored: its spec (fabric.spec.schedules) and the last tick it handled."""

    pipeline_id: str
    name: str
    spec: dict[str, Any]
    created_at: float
    team: str | None = None
    last_tick: float | None = None


_SCHEDULES = """CREATE TABLE schedules (
        team TEXT NOT NULL, pipeline_id TEXT NOT NULL, name TEXT NOT NULL, spec TEXT NOT NULL,
        created_at {real} NOT NULL, last_tick {real}, PRIMARY KEY (team, pipeline_id, name))"""
SQLITE_SCHEDULES = (_SCHEDULES.format(real="REAL"),)
POSTGRES_SCHEDULES = (_SCHEDULES.format(real="DOUBLE PRECISION"),)
SQLITE_TABLES = (
    """CREATE TABLE pipelines (
        team TEXT NOT NULL, pipeline_id TEXT NOT NULL, version INTEGER NOT NULL, spec TEXT NOT NULL,
        spec_hash TEXT NOT NULL, options TEXT NOT NULL, created_at REAL NOT NULL,
        PRIMARY KEY (team, pipeline_id, version))""",
    # A version is immutable: what ran as version 3 stays version 3.
    """CREATE TRIGGER pipelines_immutable BEFORE UPDATE ON pipelines
        BEGIN SELECT RAISE(ABORT, 'pipeline versions are immutable: UPDATE is not allowed'); END""",
)
POSTGRES_TABLES = (
    """CREATE TABLE pipelines (
        team TEXT NOT NULL, pipeline_id TEXT NOT NULL, version INTEGER NOT NULL, spec TEXT NOT NULL,
        spec_hash TEXT NOT NULL, options TEXT NOT NULL, created_at DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (team, pipeline_id, version))""",
    """CREATE FUNCTION fabric_pipelines_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'pipeline versions are immutable: % is not allowed', TG_OP; END $$""",
    """CREATE TRIGGER pipelines_immutable BEFORE UPDATE ON pipelines
        FOR EACH ROW EXECUTE FUNCTION fabric_pipelines_immutable()""",
)
_COLUMNS = "team, pipeline_id, version, spec, spec_hash, options, created_at"


def _row(row: tuple[Any, ...] | Any) -> PipelineVersion:
    team, pipeline_id, version, spec, spec_hash, options, created_at = row
    return PipelineVersion(pipeline_id, int(version), json.loads(spec), spec_hash, float(created_at),
                           team or None, json.loads(options))


_SCHEDULE_COLUMNS = "team, pipeline_id, name, spec, created_at, last_tick"


def _schedule(row: tuple[Any, ...] | Any) -> ScheduleRecord:
    team, pipeline_id, name, spec, created_at, last_tick = row
    return ScheduleRecord(pipeline_id, name, json.loads(spec), float(created_at), team or None,
                          None if last_tick is None else float(last_tick))


def _same(a: PipelineVersion, b: PipelineVersion) -> bool:
    return a.spec_hash == b.spec_hash and a.options == b.options


class SqlCatalogue:
    """The catalogue's methods for a SQL store that has `_txn()` (one transaction; any driver error is
    STORE_UNAVAILABLE) and a placeholder style `_P` ('?' for SQLite, '%s' for psycopg)."""

    _P = "?"

    if TYPE_CHECKING:
        def _txn(self) -> AbstractContextManager[Any]: ...

    def add_pipeline_version(self, draft: PipelineVersion) -> tuple[PipelineVersion, bool]:
        """Record `draft` as the pipeline's next version (its `version` is ignored), or return the latest one
        when it has the same spec and options (registering twice makes one version). True when created."""
        p, team = self._P, draft.team or NO_TEAM
        with self._txn() as conn:
            row = conn.execute(f"SELECT {_COLUMNS} FROM pipelines WHERE team = {p} AND pipeline_id = {p} "
                               "ORDER BY version DESC LIMIT 1", (team, draft.pipeline_id)).fetchone()
            latest = None if row is None else _row(row)
            if latest is not None and _same(latest, draft):
                return latest, False
            made = replace(draft, version=1 if latest is None else latest.version + 1)
            conn.execute(f"INSERT INTO pipelines ({_COLUMNS}) VALUES ({', '.join([p] * 7)})",
                         (team, made.pipeline_id, made.version, json.dumps(made.spec), made.spec_hash,
                          json.dumps(made.options), made.created_at))
        return made, True

    def pipeline_versions(self, team: str | None, pipeline_id: str) -> list[PipelineVersion]:
        """Every version of one of the team's pipelines, newest first (empty when it has none)."""
        p = self._P
        with self._txn() as conn:
            rows = conn.execute(f"SELECT {_COLUMNS} FROM pipelines WHERE team = {p} AND pipeline_id = {p} "
                                "ORDER BY version DESC", (team or NO_TEAM, pipeline_id)).fetchall()
        return [_row(r) for r in rows]

    def latest_pipelines(self, team: str | None) -> list[PipelineVersion]:
        """The latest version of each of the team's pipelines, by pipeline id."""
        p = self._P
        with self._txn() as conn:
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM pipelines AS v WHERE team = {p} AND version = "
                "(SELECT MAX(version) FROM pipelines AS w WHERE w.team = v.team AND w.pipeline_id = v.pipeline_id) "
                "ORDER BY pipeline_id", (team or NO_TEAM,)).fetchall()
        return [_row(r) for r in rows]


    def put_schedule(self, record: ScheduleRecord) -> ScheduleRecord:
        """Create a schedule, or change its spec (its creation time and last tick stay: changing a schedule
        never fires a tick again)."""
        p = self._P
        with self._txn() as conn:
            conn.execute(
                f"INSERT INTO schedules ({_SCHEDULE_COLUMNS}) VALUES ({', '.join([p] * 6)}) "
                "ON CONFLICT (team, pipeline_id, name) DO UPDATE SET spec = excluded.spec",
                (record.team or NO_TEAM, record.pipeline_id, record.name, json.dumps(record.spec), record.created_at,
                 record.last_tick))
            row = conn.execute(f"SELECT {_SCHEDULE_COLUMNS} FROM schedules WHERE team = {p} AND pipeline_id = {p} "
                               f"AND name = {p}", (record.team or NO_TEAM, record.pipeline_id, record.name)).fetchone()
        return _schedule(row)

    def schedules(self, team: str | None, pipeline_id: str | None = None, *,
                  every_team: bool = False) -> list[ScheduleRecord]:
        """The team's schedules (of one pipeline), or every team's (the registry's scheduler)."""
        p, where, args = self._P, [], []
        if not every_team:
            where.append(f"team = {p}")
            args.append(team or NO_TEAM)
        if pipeline_id is not None:
            where.append(f"pipeline_id = {p}")
            args.append(pipeline_id)
        sql = f"SELECT {_SCHEDULE_COLUMNS} FROM schedules"
        if where:
            sql += " WHERE " + " AND ".join(where)
        with self._txn() as conn:
            rows = conn.execute(sql + " ORDER BY team, pipeline_id, name", tuple(args)).fetchall()
        return [_schedule(r) for r in rows]

    def mark_tick(self, team: str | None, pipeline_id: str, name: str, tick: float) -> None:
        """Record the newest tick handled; it only moves forward."""
        p = self._P
        with self._txn() as conn:
            conn.execute(f"UPDATE schedules SET last_tick = {p} WHERE team = {p} AND pipeline_id = {p} AND name = {p} "
                         f"AND (last_tick IS NULL OR last_tick < {p})",
                         (tick, team or NO_TEAM, pipeline_id, name, tick))


class MemoryCatalogue:
    """The catalogue's methods in memory (MemoryStore)."""

    def __init__(self) -> None:
        self._catalogue_lock = threading.Lock()
        self._pipelines: dict[tuple[str, str], list[PipelineVersion]] = {}
        self._schedules: dict[tuple[str, str, str], ScheduleRecord] = {}

    def add_pipeline_version(self, draft: PipelineVersion) -> tuple[PipelineVersion, bool]:
        with self._catalogue_lock:
            versions = self._pipelines.setdefault((draft.team or NO_TEAM, draft.pipeline_id), [])
            if versions and _same(versions[-1], draft):
                return versions[-1], False
            made = replace(draft, version=len(versions) + 1)
            versions.append(made)
            return made, True

    def pipeline_versions(self, team: str | None, pipeline_id: str) -> list[PipelineVersion]:
        with self._catalogue_lock:
            return list(reversed(self._pipelines.get((team or NO_TEAM, pipeline_id), [])))

    def latest_pipelines(self, team: str | None) -> list[PipelineVersion]:
        with self._catalogue_lock:
            found = [v[-1] for (t, _), v in self._pipelines.items() if t == (team or NO_TEAM) and v]
        return sorted(found, key=lambda v: v.pipeline_id)

    def put_schedule(self, record: ScheduleRecord) -> ScheduleRecord:
        key = (record.team or NO_TEAM, record.pipeline_id, record.name)
        with self._catalogue_lock:
            old = self._schedules.get(key)
            self._schedules[key] = record if old is None else replace(old, spec=record.spec)
            return self._schedules[key]

    def schedules(self, team: str | None, pipeline_id: str | None = None, *,
                  every_team: bool = False) -> list[ScheduleRecord]:
        with self._catalogue_lock:
            return [r for k, r in sorted(self._schedules.items())
                    if (every_team or k[0] == (team or NO_TEAM)) and pipeline_id in (None, k[1])]

    def mark_tick(self, team: str | None, pipeline_id: str, name: str, tick: float) -> None:
        key = (team or NO_TEAM, pipeline_id, name)
        with self._catalogue_lock:
            old = self._schedules.get(key)
            if old is not None and (old.last_tick is None or old.last_tick < tick):
                self._schedules[key] = replace(old, last_tick=tick)

