"""The registry's pipeline catalogue: register versions, list them, and start runs by name with overlap rules."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from fabric.errors import ConflictError, ErrorCode, FabricError, NotFoundError, SpecError
from fabric.kinds import kind_checks
from fabric.plan import compile_plan, kind_problems
from fabric.plan.hashing import digest
from fabric.record import Store
from fabric.record.catalogue import PipelineVersion
from fabric.record.ids import team_record
from fabric.schedule.grants import TeamGrants, check_submission
from fabric.schedule.overlap import OverlapDecision, decide
from fabric.schedule.startqueue import MAX_QUEUED, StartQueue
from fabric.spec import load_spec, parse_runtime_params
from fabric.spec.catalogue import PIPELINE_LABEL, VERSION_LABEL, Overlap, parse_pipeline_options
from fabric.spec.subdags import expand
from fabric.types import new_submission_id

log = logging.getLogger(__name__)

Submit = Callable[..., dict[str, Any]]  # Registry.submit: (spec, runtime_params, ..., grants=)
MAX_ACTIVE_SCAN = 10_000


class Catalogue:
    """Registered pipelines of every team (each team sees and runs only its own), over the registry's store."""

    def __init__(self, store: Store, submit: Submit, cancel: Callable[[str], None],
                 clock: Callable[[], float] = time.time) -> None:
        self._store = store
        self._submit = submit
        self._cancel = cancel
        self._lock = threading.Lock()  # the count of active runs and the start are one step
        # overlap queue: starts held until a run ends, in this registry's memory (a restart drops them)
        self._queue = StartQueue(clock)

    def register(self, spec: dict[str, Any], options: dict[str, Any] | None, team: str | None,
                 grants: TeamGrants | None = None) -> dict[str, Any]:
        """Validate the spec as a submit would (kinds checked with the params' defaults; with `grants`, the
        team's claims) and record it as the pipeline's next version; the same spec and options as the latest
        version return that version."""
        normal = load_spec(spec).to_dict()  # recorded as written: a `pipeline` node runs its child's latest version
        # checked expanded: a missing child, or a cycle through registered pipelines, is refused
        dag = load_spec(expand(normal, self.resolver(team), name=normal["pipeline_id"]))
        opts = parse_pipeline_options(options)
        if grants is not None:  # a schedule fires its versions later, with no token: they are checked here
            check_submission(grants, team or "", dag, parse_runtime_params(None))
        problems = kind_problems(dag, kind_checks())
        if problems:
            raise SpecError.from_problems(problems)
        draft = PipelineVersion(dag.pipeline_id, 0, normal, digest(normal), time.time(), team,
                                opts.model_dump(mode="json"))
        made, created = self._store.add_pipeline_version(draft)
        return {**made.to_dict(), "created": created}

    def pipelines(self, team: str | None) -> list[dict[str, Any]]:
        return [v.to_dict() for v in self._store.latest_pipelines(team)]

    def versions(self, pipeline_id: str, team: str | None) -> list[dict[str, Any]]:
        return [v.to_dict(with_spec=True) for v in self._versions(pipeline_id, team)]

    def runs(self, pipeline_id: str, limit: int, team: str | None) -> list[dict[str, Any]]:
        """The pipeline's recent runs started by name, newest first."""
        self._versions(pipeline_id, team)
        rows = self._store.list_submissions(None, limit, labels={PIPELINE_LABEL: pipeline_id}, team=team)
        with self._lock:
            queued = [{"submission_id": q.submission_id, "state": "QUEUED", "created_at": q.queued_at,
                       "version": q.version, "params": q.request[0].get("params", {})}
                      for q in reversed(self._queue.waiting((team, pipeline_id)))]
        return queued + [{"submission_id": r.submission_id, "state": r.state, "created_at": r.created_at,
                          "version": int(r.labels.get(VERSION_LABEL, "0")),
                          "params": r.runtime_params.get("params", {})} for r in rows if r.team == team]

    def run(self, pipeline_id: str, version: int | None, runtime_params: dict[str, Any] | None,
            team: str | None, grants: TeamGrants | None = None, *, may_cancel: bool = True) -> dict[str, Any]:
        """Start a run of a version (default: the latest) with runtime params (its `params` the pipeline's),
        unless max_active_runs says skip; with overlap cancel_older, the oldest running runs are cancelled
        (unless `may_cancel` is False: a backfill's run waits instead). A submission id already used by a run
        of the pipeline (a retried start, a trigger's key again) answers that run, of the version it ran.
        `grants`: the team's, checked by the submit as for any other (fabric/schedule/grants.py)."""
        runtime = parse_runtime_params(runtime_params).model_dump(mode="json", exclude_none=True)
        earlier = team_record(self._store, runtime["submission_id"], team) if runtime.get("submission_id") else None
        if version is None and earlier is not None and earlier.labels.get(PIPELINE_LABEL) == pipeline_id:
            version = int(earlier.labels.get(VERSION_LABEL, "0")) or None
        chosen = self.version(pipeline_id, version, team)
        runtime["labels"] = {**runtime.get("labels", {}), PIPELINE_LABEL: pipeline_id,
                             VERSION_LABEL: str(chosen.version)}
        runtime.pop("team", None)  # a run is the catalogue's team's: its own pipelines, its own runs
        if team is not None:
            runtime["team"] = team
        opts = parse_pipeline_options(chosen.options)
        base = {"pipeline_id": pipeline_id, "version": chosen.version}
        with self._lock:
            sid = runtime.get("submission_id")
            if sid and team_record(self._store, sid, team) is not None:  # a retried start: the same answer
                return {**base, **self._submit(chosen.spec, runtime, grants=grants), "skipped": False,
                        "cancelled": []}
            policy = opts.overlap if may_cancel else Overlap.SKIP
            if policy is Overlap.QUEUE and self._queue.waiting((team, pipeline_id)):  # first come, first started
                decision = OverlapDecision(False, reason="earlier starts are queued: queued behind them", queue=True)
            else:
                decision = decide(self._active(pipeline_id, team), opts.max_active_runs, policy)
            if decision.queue:
                return self._enqueue(base, pipeline_id, chosen, runtime, team, grants, decision.reason)
            if not decision.start:
                return {**base, "submission_id": None, "created": False, "skipped": True,
                        "reason": decision.reason, "cancelled": []}
            # Validates the params and checks the grants: a 422 or 403 before anything is cancelled.
            reply = self._submit(chosen.spec, runtime, grants=grants)
            for old in decision.cancel:
                self._cancel(old)
        return {**base, **reply, "skipped": False, "cancelled": list(decision.cancel),
                **({"reason": decision.reason} if decision.cancel else {})}

    def _active(self, pipeline_id: str, team: str | None) -> list[tuple[float, str]]:
        return [(r.created_at, r.submission_id) for r in self._store.list_submissions(
            "RUNNING", MAX_ACTIVE_SCAN, labels={PIPELINE_LABEL: pipeline_id}, team=team) if r.team == team]

    def _enqueue(self, base: dict[str, Any], pipeline_id: str, chosen: PipelineVersion, runtime: dict[str, Any],
                 team: str | None, grants: TeamGrants | None, reason: str) -> dict[str, Any]:
        """Hold a start (overlap queue) after checking what its submit would: its params (422) and grants (403)."""
        dag = load_spec(chosen.spec)
        checked = parse_runtime_params(runtime)
        compile_plan(dag, checked)  # the params resolve, or a 422 naming them: nothing is queued
        if grants is not None:
            check_submission(grants, team or "", dag, checked)
        runtime["submission_id"] = runtime.get("submission_id") or new_submission_id()
        for waiting in self._queue.waiting((team, pipeline_id)):  # a retried start: the same request, or a 409
            if waiting.submission_id == runtime["submission_id"] and (
                    waiting.version != chosen.version or waiting.request[0] != runtime):
                raise ConflictError(f"submission_id {runtime['submission_id']!r} is queued for another request",
                                    code=ErrorCode.IDEMPOTENCY_CONFLICT, where="submission_id",
                                    fix="use a new submission_id (or Idempotency-Key)")
        place = self._queue.offer((team, pipeline_id), runtime["submission_id"], chosen.version, (runtime, grants))
        if place is None:
            return {**base, "submission_id": None, "created": False, "skipped": True, "cancelled": [],
                    "reason": f"{reason}; {MAX_QUEUED} starts already wait: skipped"}
        return {**base, "submission_id": runtime["submission_id"], "created": False, "skipped": False,
                "queued": True, "position": place, "reason": reason, "cancelled": []}

    def start_queued(self) -> list[dict[str, Any]]:
        """Start the queued starts that now have a slot, oldest first (the registry calls it every second). A
        start that no longer can (its version gone, the team's grants changed) is logged and dropped."""
        started: list[dict[str, Any]] = []
        with self._lock:
            for team, pipeline_id in self._queue.lines():
                waiting = self._queue.waiting((team, pipeline_id))
                try:
                    limit = parse_pipeline_options(self.version(pipeline_id, waiting[0].version, team).options)
                except FabricError:
                    limit = parse_pipeline_options(None)  # its version is gone: each start fails below, and says so
                free = (limit.max_active_runs or len(waiting)) - len(self._active(pipeline_id, team))
                for item in self._queue.take((team, pipeline_id), free):
                    runtime, grants = item.request
                    try:
                        spec = self.version(pipeline_id, item.version, team).spec
                        reply = self._submit(spec, runtime, grants=grants)
                    except FabricError as exc:
                        log.error("queued start %s of %s not started: %s", item.submission_id, pipeline_id, exc)
                        continue
                    started.append({"pipeline_id": pipeline_id, "version": item.version, **reply})
        return started

    def _versions(self, pipeline_id: str, team: str | None) -> list[PipelineVersion]:
        versions = self._store.pipeline_versions(team, pipeline_id)
        if not versions:
            raise NotFoundError(f"no pipeline {pipeline_id!r}", code=ErrorCode.NOT_FOUND, where="pipeline_id",
                                fix="register it with `fabric register dag.yaml`; `fabric pipelines` lists them")
        return versions

    def resolver(self, team: str | None) -> Callable[[str, int | None], dict[str, Any]]:
        """How a `pipeline` node of this team's finds its child: only among the team's own pipelines."""
        return lambda pipeline_id, version: self.version(pipeline_id, version, team).spec

    def version(self, pipeline_id: str, version: int | None, team: str | None) -> PipelineVersion:
        """One version of one of the team's pipelines (None: the latest); NOT_FOUND naming what is missing."""
        versions = self._versions(pipeline_id, team)
        if version is None:
            return versions[0]
        for v in versions:
            if v.version == version:
                return v
        raise NotFoundError(f"pipeline {pipeline_id!r} has no version {version}", code=ErrorCode.NOT_FOUND,
                            where="version", fix=f"versions are 1 to {versions[0].version}")
