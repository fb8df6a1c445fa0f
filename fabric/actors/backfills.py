"""The registry's backfills: one run per date of a registered pipeline, at most N at once, carried on by the
registry (and by the next one after a restart) until every date is done or it is cancelled."""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from typing import Any

from fabric.actors.catalogue import Catalogue
from fabric.errors import ConflictError, ErrorCode, FabricError, NotFoundError, Problem, SpecError
from fabric.plan.hashing import digest
from fabric.record import Store
from fabric.record.backfills import BackfillRecord
from fabric.schedule.backfill import (
    BACKFILL_LABEL,
    IDENTITY_LABEL,
    RUNNING,
    Progress,
    date_of,
    identity,
    new_backfill_id,
    progress,
    run_id,
)
from fabric.schedule.grants import TeamGrants, check_submission
from fabric.spec import load_spec, parse_runtime_params
from fabric.spec.backfills import MAX_DATES, BackfillSpec, parse_backfill
from fabric.spec.catalogue import PIPELINE_LABEL
from fabric.spec.params import ParamType, resolve_params

log = logging.getLogger(__name__)

BACKFILL_INTERVAL_S = 1.0  # how often the registry starts the next dates of running backfills
SUCCEEDED_SCAN = 100_000  # succeeded runs of the pipeline read once per backfill to find identical runs
Key = tuple[str, str]  # (team or "", backfill_id)


class Backfills:
    """Every team's backfills over the registry's store. A date's run has the id `run_id(backfill, date)` and
    the labels `fabric.backfill` and `fabric.backfill.identity`: what is started is found again in the store,
    so a restarted registry carries on without starting any date twice."""

    def __init__(self, store: Store, catalogue: Catalogue, cancel: Callable[[str], None],
                 clock: Callable[[], float],
                 grants_of: Callable[[str], TeamGrants | None] = lambda team: None) -> None:
        self._store = store
        # A team's grants as they are now (fabric/actors/schedules.py, tokens_file_grants): each date starts on
        # them, so a scope or priority taken away from a team stops its backfills' next dates too.
        self._grants_of = grants_of
        self._catalogue = catalogue
        self._cancel = cancel
        self._clock = clock
        self._lock = threading.Lock()  # one pass over a backfill at a time (the pump, a create, a cancel)
        self._done_elsewhere: dict[Key, set[dt.date]] = {}  # found identical and SUCCEEDED (they stay so)
        self._unstartable: dict[Key, dict[dt.date, str]] = {}  # dates whose run was refused: why (until restart)

    def create(self, pipeline_id: str, raw: dict[str, Any], team: str | None,
               grants: TeamGrants | None = None) -> dict[str, Any]:
        """Validate (422 naming the field), pin the version, record the backfill and start its first dates.
        The same backfill_id and request again answers that backfill (`created: false`); another request
        under it is 409 IDEMPOTENCY_CONFLICT."""
        spec = parse_backfill(raw)
        chosen = self._catalogue.version(pipeline_id, spec.version, team)
        dag = load_spec(chosen.spec)
        dates = spec.dates()
        declared = dag.params.get(spec.date_param)
        if declared is None or declared.type not in (ParamType.DATE, ParamType.STRING):
            known = ", ".join(n for n, p in dag.params.items() if p.type in (ParamType.DATE, ParamType.STRING))
            what = "has no parameter" if declared is None else f"has a {declared.type} parameter"
            raise SpecError.from_problems([Problem(
                ErrorCode.PARAM_UNKNOWN if declared is None else ErrorCode.PARAM_TYPE, "date_param",
                f"pipeline {pipeline_id!r} {what} {spec.date_param!r}: each run's date goes into a date or string "
                "param", f"name one with --date-param (date or string params: {known or 'none'})")], what="backfill")
        first = {**spec.params, spec.date_param: dates[0].isoformat()}
        _, problems = resolve_params(dag.params, first, where="params")
        if problems:
            raise SpecError.from_problems(problems, what="backfill")
        if grants is not None:  # its runs start later, with no token: they are checked here
            check_submission(grants, team or "", dag, parse_runtime_params({"params": first}))
        request = spec.model_dump(mode="json")
        backfill_id = spec.backfill_id or new_backfill_id(self._clock())
        stored = {"request": {**request, "backfill_id": backfill_id}, "version": chosen.version,
                  "spec_hash": chosen.spec_hash}
        draft = BackfillRecord(backfill_id, pipeline_id, stored, self._clock(), team, RUNNING,
                               digest({"pipeline_id": pipeline_id, **request, "backfill_id": backfill_id}))
        record, created = self._store.add_backfill(draft)
        if not created and record.request_hash != draft.request_hash:
            raise ConflictError(f"backfill_id {backfill_id!r} was already used for another backfill",
                                code=ErrorCode.IDEMPOTENCY_CONFLICT, where="backfill_id",
                                fix="use a new backfill_id, or send the identical request to get the same one")
        if created:
            self._pump(record)
        return {**self.view(self._get(backfill_id, team)), "created": created}

    def get(self, backfill_id: str, team: str | None) -> dict[str, Any]:
        return self.view(self._get(backfill_id, team))

    def rows(self, pipeline_id: str | None, team: str | None) -> list[dict[str, Any]]:
        """The team's backfills (of one pipeline), newest first, with their counts (not each date)."""
        out = []
        for record in self._store.backfills(team, pipeline_id):
            row = self.view(record)
            row.pop("runs")
            out.append(row)
        return out

    def cancel(self, backfill_id: str, team: str | None) -> dict[str, Any]:
        """Cancel as a whole: nothing more starts, and its running runs are cancelled."""
        record = self._get(backfill_id, team)
        with self._lock:
            self._store.set_backfill_state(team, backfill_id, "CANCELLED")
        for sid, state in self._own(record).values():
            if state == RUNNING:
                try:
                    self._cancel(sid)
                except Exception as exc:  # noqa: BLE001 - one run that cannot be cancelled must not stop the rest
                    log.warning("backfill %s: run %s not cancelled: %s", backfill_id, sid, exc)
        return self.view(self._get(backfill_id, team))

    def pump(self) -> None:
        """Start the next dates of every running backfill, and end those that are done."""
        for record in self._store.backfills(None, every_team=True, state=RUNNING):
            try:
                self._pump(record)
            except Exception:  # noqa: BLE001 - one broken backfill must not stop the others
                log.exception("backfill %s of team %s not advanced", record.backfill_id, record.team)

    def run_forever(self, stop: threading.Event, interval: float = BACKFILL_INTERVAL_S) -> None:
        while not stop.wait(interval):
            try:
                self.pump()
            except Exception as exc:  # noqa: BLE001 - the store away for a moment: try again next interval
                log.warning("backfills not advanced: %s", exc)

    # -- one backfill ------------------------------------------------------------------------------------

    def _pump(self, record: BackfillRecord) -> Progress:
        spec, key = _spec(record), (record.team or "", record.backfill_id)
        dates = spec.dates()
        with self._lock:
            if all(b.backfill_id != record.backfill_id for b in self._store.backfills(
                    record.team, record.pipeline_id, state=RUNNING)):  # cancelled meanwhile
                return self._progress(self._get(record.backfill_id, record.team), spec)
            done = self._done_elsewhere.get(key)
            if done is None:
                done = self._done_elsewhere[key] = self._scan_identical(record, spec, dates)
            own = {day: state for day, (_, state) in self._own(record).items()}
            own.update({day: "FAILED" for day in self._unstartable.get(key, {})})
            while True:
                found = progress(dates, own, done, spec.max_active)
                if not found.start or not self._start(record, spec, found.start, own, done):
                    break
            found = progress(dates, own, done, spec.max_active)
            if found.state != RUNNING:
                self._store.set_backfill_state(record.team, record.backfill_id, found.state)
            return found

    def _start(self, record: BackfillRecord, spec: BackfillSpec, days: tuple[dt.date, ...],
               own: dict[dt.date, str], done: set[dt.date]) -> bool:
        """Start these dates (skipping those an identical run finished meanwhile); True to look again (a date
        was skipped or refused), False when every slot is taken or the pipeline's max_active_runs is reached."""
        again = False
        for day in days:
            params = {**spec.params, spec.date_param: day.isoformat()}
            ident = identity(record.pipeline_id, record.spec["spec_hash"], params)
            if any(r.team == record.team for r in self._store.list_submissions(
                    "SUCCEEDED", 5, labels={IDENTITY_LABEL: ident}, team=record.team)):
                done.add(day)
                again = True
                continue
            runtime = {"submission_id": run_id(record.backfill_id, day), "params": params,
                       "labels": {BACKFILL_LABEL: record.backfill_id, IDENTITY_LABEL: ident}}
            try:
                grants = self._grants_of(record.team) if record.team else None
                reply = self._catalogue.run(record.pipeline_id, record.spec["version"], runtime, record.team,
                                            grants, may_cancel=False)
            # The date cannot run (its id was taken by another request, the team lost a grant its runs claim): it
            # counts as failed, is logged, and the rest go on.
            except FabricError as exc:
                if not isinstance(exc, SpecError | NotFoundError | ConflictError) and exc.code != ErrorCode.FORBIDDEN:
                    raise
                log.error("backfill %s: %s not started: %s", record.backfill_id, day, exc)
                self._unstartable.setdefault((record.team or "", record.backfill_id), {})[day] = str(exc)
                own[day] = "FAILED"
                again = True
                continue
            if reply.get("skipped"):  # the pipeline's max_active_runs: wait for a slot
                return False
            own[day] = RUNNING
        return again

    def _scan_identical(self, record: BackfillRecord, spec: BackfillSpec, dates: list[dt.date]) -> set[dt.date]:
        """The dates whose identical run already SUCCEEDED (in this backfill or any other way)."""
        seen = {r.labels.get(IDENTITY_LABEL) for r in self._store.list_submissions(
            "SUCCEEDED", SUCCEEDED_SCAN, labels={PIPELINE_LABEL: record.pipeline_id}, team=record.team)
            if r.team == record.team}
        return {day for day in dates if identity(record.pipeline_id, record.spec["spec_hash"],
                                                 {**spec.params, spec.date_param: day.isoformat()}) in seen}

    def _own(self, record: BackfillRecord) -> dict[dt.date, tuple[str, str]]:
        """Each date's run this backfill started: (submission id, state)."""
        found: dict[dt.date, tuple[str, str]] = {}
        for r in self._store.list_submissions(None, 2 * MAX_DATES, labels={BACKFILL_LABEL: record.backfill_id},
                                              team=record.team):
            day = date_of(r.submission_id)
            if r.team == record.team and day is not None and r.submission_id.endswith(run_id(record.backfill_id, day)):
                found[day] = (r.submission_id, r.state)
        return found

    def _progress(self, record: BackfillRecord, spec: BackfillSpec,
                  ids: dict[dt.date, tuple[str, str]] | None = None) -> Progress:
        key = (record.team or "", record.backfill_id)
        if key not in self._done_elsewhere:  # a backfill that ended before this registry started
            self._done_elsewhere[key] = self._scan_identical(record, spec, spec.dates())
        own = {day: state for day, (_, state) in (self._own(record) if ids is None else ids).items()}
        own.update({day: "FAILED" for day in self._unstartable.get(key, {})})
        return progress(spec.dates(), own, self._done_elsewhere.get(key, set()), spec.max_active,
                        cancelled=record.state == "CANCELLED")

    def view(self, record: BackfillRecord) -> dict[str, Any]:
        spec = _spec(record)
        ids = self._own(record)
        found = self._progress(record, spec, ids)
        errors = self._unstartable.get((record.team or "", record.backfill_id), {})
        # A backfill's stored state is final once ended; while running, the counts say how far it got.
        state = record.state if record.state != RUNNING else found.state
        return {"backfill_id": record.backfill_id, "pipeline_id": record.pipeline_id, "state": state,
                "version": record.spec["version"], "created_at": record.created_at, "team": record.team,
                **{k: v for k, v in record.spec["request"].items() if k not in ("backfill_id", "version")},
                "total": len(found.rows), "counts": found.counts,
                "runs": [{"date": day.isoformat(), "state": s, "submission_id": ids.get(day, (None,))[0],
                          **({"error": errors[day]} if day in errors else {})} for day, s in found.rows]}

    def _get(self, backfill_id: str, team: str | None) -> BackfillRecord:
        for record in self._store.backfills(team):
            if record.backfill_id == backfill_id:
                return record
        raise NotFoundError(f"no backfill {backfill_id!r}", code=ErrorCode.NOT_FOUND, where="backfill_id",
                            fix="list them with `fabric backfills`")


def _spec(record: BackfillRecord) -> BackfillSpec:
    return parse_backfill(record.spec["request"])


class BackfillMethods:
    """The registry actor's backfill methods (a thin face over `Backfills`)."""

    _backfills: Backfills

    def backfill(self, pipeline_id: str, spec: dict[str, Any], team: str | None = None,
                 grants: TeamGrants | None = None) -> dict[str, Any]:
        return self._backfills.create(pipeline_id, spec, team, grants)

    def backfill_status(self, backfill_id: str, team: str | None = None) -> dict[str, Any]:
        return self._backfills.get(backfill_id, team)

    def backfills(self, pipeline_id: str | None = None, team: str | None = None) -> list[dict[str, Any]]:
        return self._backfills.rows(pipeline_id, team)

    def cancel_backfill(self, backfill_id: str, team: str | None = None) -> dict[str, Any]:
        return self._backfills.cancel(backfill_id, team)
