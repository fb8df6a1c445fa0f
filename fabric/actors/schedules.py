"""The registry's scheduler: schedules of registered pipelines, fired exactly once per tick (the id is the tick's)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from fabric.actors.catalogue import Catalogue
from fabric.errors import ConflictError, ErrorCode, FabricError, NotFoundError, SpecError
from fabric.record import Store
from fabric.record.catalogue import ScheduleRecord
from fabric.schedule.cron import due, next_fires, tick_submission_id
from fabric.schedule.grants import TeamGrants, check_submission, grants_for, parse_grants
from fabric.spec import load_spec, parse_runtime_params
from fabric.spec.params import resolve_params
from fabric.spec.schedules import ScheduleSpec, parse_schedule

log = logging.getLogger(__name__)

SCHEDULE_INTERVAL_S = 1.0  # how often the registry looks for due ticks


class Scheduler:
    """Fires every team's schedules. A tick's run has the submission id `tick_submission_id(...)`, and the
    last tick handled is recorded after firing: a registry that dies in between fires the tick again after
    its restart and gets the run already started, never a second one."""

    def __init__(self, store: Store, catalogue: Catalogue, clock: Callable[[], float],
                 grants_of: Callable[[str], TeamGrants | None] = lambda team: None) -> None:
        self._store = store
        self._catalogue = catalogue
        self._clock = clock
        # A team's grants as they are now (tokens_file_grants): a tick fires on them, not on the grants the
        # schedule was registered under, so a scope or priority taken away from a team stops its schedules too.
        self._grants_of = grants_of
        self._lock = threading.Lock()  # one firing pass at a time

    def put(self, pipeline_id: str, raw: dict[str, Any], team: str | None,
            grants: TeamGrants | None = None) -> dict[str, Any]:
        """Create or change a schedule; its params are checked against the pipeline's now (422 naming them), and
        its runs against the team's grants (403): ticks fire later without a token, on what was checked here."""
        spec = parse_schedule(raw)
        version = self._catalogue.version(pipeline_id, spec.version, team)
        dag = load_spec(version.spec)
        _, problems = resolve_params(dag.params, spec.params, where="params")
        if problems:
            raise SpecError.from_problems(problems, what="schedule")
        if grants is not None:
            check_submission(grants, team or "", dag, parse_runtime_params({"params": spec.params}))
        record = self._store.put_schedule(ScheduleRecord(pipeline_id, spec.name, _dump(spec), self._clock(), team))
        return self._row(record)

    def rows(self, pipeline_id: str | None, team: str | None) -> list[dict[str, Any]]:
        if pipeline_id is not None:
            self._catalogue.version(pipeline_id, None, team)
        return [self._row(r) for r in self._store.schedules(team, pipeline_id)]

    def set_paused(self, pipeline_id: str, name: str, paused: bool, team: str | None) -> dict[str, Any]:
        """Pause, or resume: ticks that passed while paused are not fired (the schedule starts again from now)."""
        record = self._get(pipeline_id, name, team)
        spec = parse_schedule({**record.spec, "paused": paused})
        updated = self._store.put_schedule(ScheduleRecord(pipeline_id, name, _dump(spec), record.created_at, team))
        if not paused:
            self._store.mark_tick(team, pipeline_id, name, self._clock())
            updated = self._get(pipeline_id, name, team)
        return self._row(updated)

    def fire_due(self, now: float | None = None) -> list[dict[str, Any]]:
        """Fire every due tick of every schedule; returns what each fire answered."""
        now = self._clock() if now is None else now
        fired: list[dict[str, Any]] = []
        with self._lock:
            for record in self._store.schedules(None, every_team=True):
                try:
                    fired.extend(self._fire(record, now))
                except Exception:  # noqa: BLE001 - one broken schedule must not stop the others
                    log.exception("schedule %s/%s of team %s failed to fire", record.pipeline_id, record.name,
                                  record.team)
        return fired

    def _fire(self, record: ScheduleRecord, now: float) -> list[dict[str, Any]]:
        spec = parse_schedule(record.spec)
        plan = due(spec, record.last_tick, record.created_at, now)
        fired = []
        for tick in plan.fire:
            sid = tick_submission_id(record.team, record.pipeline_id, record.name, tick)
            runtime = {"submission_id": sid, "params": dict(spec.params),
                       "labels": {"fabric.schedule": record.name}}
            try:
                grants = self._grants_of(record.team) if record.team else None
                reply = self._catalogue.run(record.pipeline_id, spec.version, runtime, record.team, grants)
            # The pipeline changed under the schedule (its params, a version gone, a tick re-fired after a new
            # version was registered), or the team lost a grant its runs claim: the tick is logged and passed,
            # never retried forever.
            except FabricError as exc:
                if not isinstance(exc, SpecError | NotFoundError | ConflictError) and exc.code != ErrorCode.FORBIDDEN:
                    raise
                log.error("schedule %s/%s tick %s not started: %s", record.pipeline_id, record.name, sid, exc)
                reply = {"submission_id": None, "error": str(exc)}
            fired.append({**reply, "schedule": record.name, "tick": tick})
        if plan.last_tick is not None:
            self._store.mark_tick(record.team, record.pipeline_id, record.name, plan.last_tick)
        return fired

    def run_forever(self, stop: threading.Event, interval: float = SCHEDULE_INTERVAL_S) -> None:
        while not stop.wait(interval):
            try:
                self._catalogue.start_queued()  # before new ticks: what waited longest starts first
                self.fire_due()
            except Exception as exc:  # noqa: BLE001 - the store away for a moment: try again next interval
                log.warning("schedules not checked: %s", exc)

    def _get(self, pipeline_id: str, name: str, team: str | None) -> ScheduleRecord:
        for record in self._store.schedules(team, pipeline_id):
            if record.name == name:
                return record
        raise NotFoundError(f"pipeline {pipeline_id!r} has no schedule {name!r}", code=ErrorCode.NOT_FOUND,
                            where="schedule", fix="list them with `fabric schedules PIPELINE`")

    def _row(self, record: ScheduleRecord) -> dict[str, Any]:
        spec = parse_schedule(record.spec)
        return {"pipeline_id": record.pipeline_id, **record.spec, "created_at": record.created_at,
                "last_tick": record.last_tick,
                "next_fires": next_fires(spec, record.last_tick, record.created_at, self._clock())}


class PipelineMethods:
    """The registry actor's catalogue and schedule methods (a thin face over `Catalogue` and `Scheduler`)."""

    _catalogue: Catalogue
    _scheduler: Scheduler

    def register_pipeline(self, spec: dict[str, Any], options: dict[str, Any] | None = None,
                          team: str | None = None, grants: TeamGrants | None = None) -> dict[str, Any]:
        return self._catalogue.register(spec, options, team, grants)

    def pipelines(self, team: str | None = None) -> list[dict[str, Any]]:
        return self._catalogue.pipelines(team)

    def pipeline_versions(self, pipeline_id: str, team: str | None = None) -> list[dict[str, Any]]:
        return self._catalogue.versions(pipeline_id, team)

    def pipeline_runs(self, pipeline_id: str, limit: int = 20, team: str | None = None) -> list[dict[str, Any]]:
        return self._catalogue.runs(pipeline_id, limit, team)

    def run_pipeline(self, pipeline_id: str, version: int | None = None, runtime_params: dict[str, Any] | None = None,
                     team: str | None = None, grants: TeamGrants | None = None) -> dict[str, Any]:
        return self._catalogue.run(pipeline_id, version, runtime_params, team, grants)

    def put_schedule(self, pipeline_id: str, schedule: dict[str, Any], team: str | None = None,
                     grants: TeamGrants | None = None) -> dict[str, Any]:
        return self._scheduler.put(pipeline_id, schedule, team, grants)

    def schedules(self, pipeline_id: str | None = None, team: str | None = None) -> list[dict[str, Any]]:
        return self._scheduler.rows(pipeline_id, team)

    def pause_schedule(self, pipeline_id: str, name: str, paused: bool, team: str | None = None) -> dict[str, Any]:
        return self._scheduler.set_paused(pipeline_id, name, paused, team)


def tokens_file_grants(path: str) -> Callable[[str], TeamGrants | None]:
    """A team's grants read afresh from the gateway's tokens file (its `grants:` section) at each call; None
    when there is no tokens file: no gateway, so every schedule was put by a holder of the control key."""

    def grants_of(team: str) -> TeamGrants | None:
        file = Path(path)
        if not file.exists():
            return None
        data = yaml.safe_load(file.read_text()) or {}
        return grants_for(parse_grants(data.get("grants")), team)
    return grants_of


def _dump(spec: ScheduleSpec) -> dict[str, Any]:
    return spec.model_dump(mode="json")
