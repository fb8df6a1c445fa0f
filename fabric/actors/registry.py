"""The registry actor: a named, detached Ray actor that accepts submissions and answers for them.

A thin shell: validation and planning are the pure `fabric.spec`/`fabric.plan`, the work is the
`fabric.execute.Engine`, the record is a `fabric.record.Store`.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import ray

from fabric.actors import NAMESPACE, observe
from fabric.actors.backfills import BackfillMethods, Backfills
from fabric.actors.catalogue import Catalogue
from fabric.actors.quota import get_or_create_quota_actor
from fabric.actors.rerun import RerunMethods
from fabric.actors.schedules import PipelineMethods, Scheduler, tokens_file_grants
from fabric.actors.served import ServedMethods
from fabric.actors.submit_gate import SubmitGate
from fabric.capability import attempt_grant, load_or_create_key
from fabric.errors import ConflictError, ErrorCode, FabricError, NotFoundError, SpecError
from fabric.execute.artifacts import check_names, list_artifacts, read_artifact
from fabric.execute.backend import RayBackend
from fabric.execute.cache import open_cache_index
from fabric.execute.engine import Engine
from fabric.execute.headsink import full_logs
from fabric.execute.notify import notifying
from fabric.execute.outputs import load_code, remove_tree, save_code
from fabric.execute.scheduler import engine_scheduler
from fabric.kinds import kind_checks
from fabric.logs import configure_logging
from fabric.plan import compile_plan
from fabric.record import Event, MemoryStore, SqliteStore, Store, SubmissionRecord
from fabric.record.ids import claim_id, request_hashes, team_record
from fabric.record.lease import LEASE_LOST, FencedStore, open_lease
from fabric.record.postgres import PostgresStore, is_postgres_url
from fabric.record.replay import status_from_events
from fabric.schedule.grants import TeamGrants, check_submission
from fabric.schedule.queue import load_config
from fabric.settings import Settings
from fabric.spec import load_spec, parse_runtime_params, read_document
from fabric.spec.mapping import parent_of
from fabric.spec.subdags import expand
from fabric.states import KILL_SWITCH, EventKind
from fabric.types import team_submission_id

log = logging.getLogger(__name__)

REGISTRY_NAME = "fabric-registry"


class Registry(PipelineMethods, RerunMethods, BackfillMethods, ServedMethods):
    """The actor's body (kept a plain class so it can be tested and reused in-process)."""

    def __init__(self, home: str, check_feasibility: bool = True, config: Settings | None = None) -> None:
        # Read here, in the actor's own process and environment (the Ray node's), once (fabric/settings.py).
        config = config or Settings.from_env(home=home)
        configure_logging(config.log_format)  # json: this actor's log records as JSON lines (fabric/logs.py)
        self.home = home
        self._config = config
        # The control plane's secret (fabric/capability.py): made on the head at the first start, mode 0600.
        self.key = load_or_create_key(Path(config.control_key_file))
        # Persisted node outputs: a local dir by default, any pyarrow.fs URI (s3://, gs://) by config.
        self._artifacts = config.artifacts
        # What is recorded also goes out as OpenLineage events and OTLP traces (fabric/actors/observe.py).
        store = open_store(home, config.store)
        # One registry per store: a second one (`fabric run` beside `fabric up` on one FABRIC_HOME, a new cluster on
        # a PostgreSQL store the old one still uses) stops here with STORE_LEASED naming the holder.
        # Once that lease is lost (another registry took a PostgreSQL store while this one was cut off), writes
        # answer STORE_LEASED and the engine stops (fenced below).
        self._lease = open_lease(home, config.store, store)
        # ... and reaches the runs' webhooks (notify:), sent off the engine's thread (fabric/execute/notify.py).
        self._store = notifying(observe.observed(FencedStore(store, self._lease), config), config.secrets_dir,
                                config.webhook_allow_private)
        # Node images run as Ray `image_uri` containers only where the cluster opted in (podman on nodes).
        # persist_outputs "needed" (default): outputs a downstream node reads are written on success, so a
        # resumed run reloads them; "none" trades that for speed: a resumed run recomputes them.
        # Admission (when configured) books team budgets in the quota actors: their factory is passed down,
        # so the engine never imports the control plane.
        scheduling = load_config(Path(config.scheduling), config.admission)
        quota_actor = partial(get_or_create_quota_actor, key_file=config.control_key_file)
        admission = (engine_scheduler(scheduling, time.time, self._store, quota_actor)
                     if scheduling is not None else None)
        backend = RayBackend((home, self._artifacts, NAMESPACE))
        self._engine = Engine(self._store, backend=backend, home=home, artifacts=self._artifacts,
                              control=(REGISTRY_NAME, NAMESPACE), use_images=config.use_images,
                              persist_outputs=config.persist_outputs != "none", admission=admission,
                              cache_index=open_cache_index(home, config.store),
                              keep_finished=config.keep_finished, keep_results=config.keep_results,
                              secrets_dir=config.secrets_dir, grant=partial(attempt_grant, self.key))
        # An autoscaler adds nodes that do not exist yet: FABRIC_SKIP_FEASIBILITY=1 lets such work queue.
        self._check_feasibility = check_feasibility and not config.skip_feasibility
        self._stop_schedules = threading.Event()  # set when the lease is lost: another registry fires them
        if self._lease is not None:
            self._lease.on_lost = self._lease_lost
        self._gate = SubmitGate()  # submits overlap across keys, so their records share a commit
        switch = self._store.events(KILL_SWITCH)
        on = bool(switch) and switch[-1].target == EventKind.KILL_SWITCH_ON
        self._kill_switch: str | None = switch[-1].reason if on else None
        self._catalogue = Catalogue(self._store, self.submit, self._engine.cancel)
        self._scheduler = Scheduler(self._store, self._catalogue, time.time, tokens_file_grants(config.tokens))
        self._backfills = Backfills(self._store, self._catalogue, self._engine.cancel, time.time,
                                    tokens_file_grants(config.tokens))
        self.resumed = self._resume_interrupted()
        # Schedules fire, and backfills go on, here: in the one registry that holds the store's lease, after the
        # resume above (a backfill's running dates are running again before it counts them).
        for loop, name in ((self._scheduler.run_forever, "fabric-schedules"),
                           (self._backfills.run_forever, "fabric-backfills")):
            threading.Thread(target=loop, args=(self._stop_schedules,), name=name, daemon=True).start()
        self._sweeper = threading.Thread(target=self._sweep_forever, args=(config.sweep_interval_s,),
                                         name="fabric-sweep", daemon=True)
        self._sweeper.start()

    def _lease_lost(self) -> None:
        self._stop_schedules.set()
        self._engine.fence(LEASE_LOST)

    def ping(self) -> str:
        return "ok"

    def pid(self) -> int:
        return os.getpid()

    def home_dir(self) -> str:
        return self.home

    def submit(self, spec: dict[str, Any], runtime_params: dict[str, Any] | None = None,
               job_runtime_env: dict[str, Any] | None = None,
               code: dict[str, bytes] | None = None, grants: TeamGrants | None = None) -> dict[str, Any]:
        """Validate, plan and start a submission; the same submission_id again returns the same one.
        `grants`: the team's (the gateway passes them): a claim beyond them is FORBIDDEN, and nothing is stored.
        A team's ids are its own: `team:key` (fabric/types.py), so keys never meet across teams."""
        runtime = parse_runtime_params(runtime_params)
        # never a path; checked off the engine thread; `pipeline` nodes become their child's nodes, found among
        # the team's own registered pipelines (recorded expanded, so a resume needs no catalogue)
        dag = load_spec(spec := expand(read_document(spec), self._catalogue.resolver(runtime.team),
                                       given=runtime.params))
        if grants is not None:
            check_submission(grants, runtime.team or "", dag, runtime)
        plan = compile_plan(dag, runtime, kind_checks(), fuse=self._config.fuse)
        if plan.params:  # recorded resolved, defaults included: status, lineage and a resume read them back
            runtime = runtime.model_copy(update={"params": dict(plan.params)})
        runtime_dump = runtime.model_dump(mode="json", exclude_none=True)
        request_hash, *older = request_hashes(dag.to_dict(), runtime_dump)  # "the same submission" (record/ids.py)
        with self._gate.starting(runtime.team, runtime.submission_id):  # one run for racing same-key submits
            if self._kill_switch is not None:
                raise FabricError(f"admission is closed: {self._kill_switch}", code=ErrorCode.ADMISSION_CLOSED,
                                  where="kill-switch", fix="retry later; an admin turns the kill-switch off")
            now = time.time()
            submission_id, existing = claim_id(self._store, runtime.submission_id, runtime.team, now)
            if existing is not None:
                if existing.request_hash not in (request_hash, *older):
                    raise ConflictError(
                        f"submission_id {runtime.submission_id!r} was already used for a different "
                        "DAG or runtime params",
                        code=ErrorCode.IDEMPOTENCY_CONFLICT, where="runtime_params.submission_id",
                        fix="use a new submission_id, or resubmit the identical request to get the same one")
                return {"submission_id": existing.submission_id, "created": False}
            if self._check_feasibility:
                problems = RayBackend.feasibility_problems(plan)
                if problems:
                    raise SpecError.from_problems(problems, "the submission")
            record = SubmissionRecord(
                submission_id=submission_id, pipeline_id=plan.pipeline_id, spec=dict(spec),
                runtime_params=runtime_dump, plan_hash=plan.plan_hash, request_hash=request_hash,
                created_at=now, team=runtime.team, labels=dict(runtime.labels))
            env = dict(job_runtime_env or {})
            if runtime.runtime_env is not None:
                user = runtime.runtime_env.model_dump(exclude_none=True, exclude_defaults=True)
                env_vars = {**env.get("env_vars", {}), **user.pop("env_vars", {})}
                env.update(user)
                if env_vars:
                    env["env_vars"] = env_vars
            record.runtime_env = env
            if code:
                save_code(self._artifacts, submission_id, code)  # a resumed run needs the notebook's code too
            code_refs = {entry: ray.put(blob) for entry, blob in (code or {}).items()}
            self._engine.start(record, plan, env or None, code_refs)
        return {"submission_id": submission_id, "created": True}

    def kill_switch(self, on: bool | None = None, reason: str = "", actor: str = "") -> dict[str, Any]:
        """Read, or turn on/off, the kill-switch: while on, nothing new is admitted; running work goes on."""
        if on is not None:
            with self._gate.switching():
                reason = reason or ("kill-switch on" if on else "")
                old, new = ((EventKind.KILL_SWITCH_OFF, EventKind.KILL_SWITCH_ON) if on
                            else (EventKind.KILL_SWITCH_ON, EventKind.KILL_SWITCH_OFF))
                self._store.append_events([Event(KILL_SWITCH, None, old, new,
                                                 time.time(), reason=f"{reason} (by {actor or 'unknown'})")])
                self._store.flush()  # an admin's switch is durable before it is acknowledged
                self._kill_switch = f"{reason} (by {actor or 'unknown'})" if on else None
        return {"on": self._kill_switch is not None, "reason": self._kill_switch or ""}

    def audit(self, subject: str, source: str, target: str, reason: str, actor: str = "") -> None:
        """Append a decision (a promotion's gate or traffic step: `_promote:<name>`) to the audit log, durably."""
        self._store.append_events([Event(subject, None, source, target, time.time(), reason=f"{reason} (by {actor})")])
        self._store.flush()

    def drain(self, timeout: float, actor: str = "") -> dict[str, Any]:
        """Close admission, wait up to `timeout` s for running submissions, report what finished."""
        self.kill_switch(True, "draining", actor)
        running = self._engine.running_ids()
        started = time.monotonic()
        for submission_id in running:
            self._engine.wait(submission_id, max(timeout - (time.monotonic() - started), 0.0))
        still = self._engine.running_ids()
        return {"waited_s": round(time.monotonic() - started, 3), "finished": [s for s in running if s not in still],
                "still_running": still, "admission": "closed"}

    def queues(self, team: str | None = None) -> dict[str, Any]:
        """Nodes waiting for admission, with position and reason, and the teams' budgets. A team sees its
        own nodes (positions are in the whole queue) and, per pool and priority, how many wait in all."""
        view = self._engine.queues()
        depth: dict[str, int] = {}
        for item in view["queue"]:
            label = f"{item['pool'] or 'default'}/{item['priority']}"
            depth[label] = depth.get(label, 0) + 1
        if team is not None:
            view["queue"] = [i for i in view["queue"] if i["team"] == team]
            view["quotas"] = [q for q in view["quotas"] if q["team"] == team]
        return {**view, "depth": depth}

    def metrics_text(self) -> str:
        """fabric's metrics as Prometheus text (the gateway's /metrics; Ray's agent exports them too)."""
        return self._engine.metrics.render()

    def kept(self) -> dict[str, int]:
        """What this registry holds in memory (the rest is paged from the store)."""
        return self._engine.kept()

    def workers(self) -> list[dict[str, Any]]:
        return RayBackend.workers()

    def sweep(self, now: float | None = None) -> dict[str, Any]:
        """Retention: remove finished submissions `ttl_days` past their end (record, logs, persisted outputs, node
        dirs; audit events stay). Reports what it removed."""
        now = time.time() if now is None else now
        removed = []
        for record in self._store.list_submissions(limit=1_000_000):
            ttl_days = record.runtime_params.get("ttl_days")
            if record.state == "RUNNING" or not ttl_days:
                continue
            ends = [e.at for e in self._store.events(record.submission_id) if e.node_id is None]
            ended_at = max(ends) if ends else record.created_at
            if ended_at + float(ttl_days) * 86_400 > now:
                continue
            sid = record.submission_id
            self._engine.forget(sid)
            counts = self._store.delete_submission_data(sid)
            files = remove_tree(self._artifacts, sid) + remove_tree(str(Path(self.home) / "runs"), sid) \
                + remove_tree(str(Path(self.home) / "logs"), sid)
            self._store.append_events([Event(sid, None, record.state, EventKind.EXPIRED, now,
                                             reason=f"retention: ttl_days={ttl_days} passed; {files} files removed")])
            removed.append({"submission_id": sid, "files": files, **counts})
        self._store.flush()
        return {"removed": removed, "at": now}

    def _sweep_forever(self, interval: float) -> None:
        while True:
            time.sleep(interval)
            try:
                report = self.sweep()
                if report["removed"]:
                    log.info("retention sweep removed %s", [r["submission_id"] for r in report["removed"]])
            except Exception:  # noqa: BLE001 - a failed sweep is retried at the next interval
                log.exception("retention sweep failed")

    def _resume_interrupted(self) -> list[str]:
        """Carry on every submission an earlier registry (or an earlier cluster) left RUNNING."""
        resumed = []
        for record in self._store.non_terminal_submissions():
            sid = record.submission_id
            try:
                plan = compile_plan(load_spec(record.spec), parse_runtime_params(record.runtime_params),
                                    kind_checks(), fuse=self._config.fuse)
                status = status_from_events(record, self._store.events(sid))
                code = {entry: ray.put(blob) for entry, blob in load_code(self._artifacts, sid).items()}
                rerun = self._engine.resume(record, plan, status, code)
            except Exception as exc:  # noqa: BLE001 - one unresumable submission must not block the rest
                reason = f"could not resume after a restart: {type(exc).__name__}: {exc}"[:500]
                self._store.append_events([Event(sid, None, "RUNNING", "FAILED", time.time(), reason=reason)])
                self._store.set_state(sid, "FAILED")
                continue
            note = "resumed by a restarted registry"
            if rerun:
                note += f"; re-running {rerun}: their outputs are not on record"
            self._store.append_events([Event(sid, None, "RUNNING", "RUNNING", time.time(), reason=note)])
            resumed.append(sid)
        self._store.flush()
        return resumed

    def _recorded(self, submission_id: str, team: str | None = None) -> SubmissionRecord:
        """The submission's record; NOT_FOUND when it does not exist or is another team's (not even that leaks)."""
        record = team_record(self._store, submission_id, team)
        if record is None:
            raise NotFoundError(f"no submission {submission_id!r}", code=ErrorCode.NOT_FOUND,
                                where="submission_id", fix="list submissions with `fabric ls`")
        return record

    def _scoped(self, submission_id: str, team: str | None) -> str:
        """The id of `team`'s submission (`team_record`'s rules), from the engine's memory where it holds it: a
        team's status reads then never wait on the store, whose lock another team's writes hold (fairness)."""
        if team is None:
            return submission_id
        for sid in dict.fromkeys((team_submission_id(team, submission_id), submission_id)):
            if self._engine.team_of(sid) == (True, team):
                return sid
        return self._recorded(submission_id, team).submission_id

    def status(self, submission_id: str, team: str | None = None) -> dict[str, Any]:
        submission_id = self._scoped(submission_id, team)
        if self._engine.has(submission_id):
            return self._engine.status(submission_id).to_dict()
        # Not run by this registry (it restarted since): the record and its events tell the story.
        record = self._recorded(submission_id)
        return status_from_events(record, self._store.events(submission_id)).to_dict()

    def wait(self, submission_id: str, timeout: float | None, team: str | None = None) -> bool:
        submission_id = self._scoped(submission_id, team)
        if self._engine.has(submission_id):
            return self._engine.wait(submission_id, timeout)
        return self._recorded(submission_id).state != "RUNNING"

    def cancel(self, submission_id: str, team: str | None = None) -> None:
        submission_id = self._scoped(submission_id, team)
        if self._engine.has(submission_id):
            self._engine.cancel(submission_id)
        else:
            self._recorded(submission_id)  # unknown -> NotFound; a finished one has nothing to cancel

    def is_cancelled(self, submission_id: str) -> bool:
        return self._engine.is_cancelled(submission_id)

    def is_stopping(self, submission_id: str, node_id: str, attempt: int) -> bool:
        return self._engine.is_stopping(submission_id, node_id, attempt)

    def report_progress(self, submission_id: str, node_id: str, attempt: int, fraction: float, message: str) -> None:
        self._engine.report_progress(submission_id, node_id, attempt, fraction, message)

    def chain_report(self, submission_id: str, items: bytes) -> None:  # a fused task's members done (chain.py)
        self._engine.chain_report(submission_id, items)

    def result_ref(self, submission_id: str, node_id: str, out: str | None,
                   team: str | None = None) -> list[Any]:
        """[the output's reference, the submission's team]: a driver opens another team's value as plain data only
        (client.py, RaySubmission.result)."""
        submission_id = self._scoped(submission_id, team)
        held, owner = self._engine.team_of(submission_id)
        if not held:
            self._recorded(submission_id)
            raise NotFoundError(
                f"the outputs of {submission_id} are gone: they lived in Ray's object store of an earlier "
                "registry", code=ErrorCode.NOT_FOUND, where=f"{submission_id}.{node_id}",
                fix="read what the node wrote to its artifact dir, or run the DAG again")
        # Wrapped in a list so that Ray hands the caller the reference, not the (maybe large) value.
        return [self._engine.result_ref(submission_id, node_id, out), owner]

    def logs(self, submission_id: str, node_id: str, team: str | None = None) -> list[tuple[int, str, str | None]]:
        if team is not None:
            submission_id = self._recorded(submission_id, team).submission_id
        if self._engine.has(submission_id):
            return self._engine.logs(submission_id, node_id)
        record = self._recorded(submission_id)
        nodes = {n["id"]: n for n in record.spec.get("nodes", [])}
        child = parent_of(node_id)  # a map's child `m[i]` is in no spec, only its map node `m` is
        if node_id not in nodes and not (child and nodes.get(child[0], {}).get("map")):
            raise NotFoundError(f"submission {submission_id} has no node {node_id!r}", code=ErrorCode.NOT_FOUND,
                                where=node_id, fix="see the node ids in `fabric status`")
        return full_logs(self.home, submission_id, node_id, self._store.get_log(submission_id, node_id))

    def artifact(self, submission_id: str, node_id: str | None, name: str, team: str | None = None) -> bytes:
        """One artifact's bytes: the run's metrics.json (node None) or a file a node wrote (execute/artifacts.py)."""
        check_names(submission_id, node_id, name)  # a bad name is a 422 before any lookup
        submission_id = self._recorded(submission_id, team).submission_id
        return read_artifact(self._artifacts, submission_id, node_id, name)

    def artifacts(self, submission_id: str, team: str | None = None) -> dict[str, Any]:
        check_names(submission_id, None, None)
        submission_id = self._recorded(submission_id, team).submission_id
        return list_artifacts(self._artifacts, submission_id)

    def graph(self, submission_id: str, team: str | None = None) -> dict[str, Any]:
        """The DAG's shape, each attempt's queue wait and run time, and the critical path (for the UI)."""
        record = self._recorded(submission_id, team)
        self._store.flush()
        return observe.graph_view(record, self._store.events(record.submission_id))

    def lineage(self, submission_id: str, team: str | None = None) -> list[dict[str, Any]]:
        """The OpenLineage RunEvents of the submission and of each node attempt, from its recorded events."""
        record = self._recorded(submission_id, team)
        self._store.flush()
        return observe.lineage_view(record, self._store.events(record.submission_id), self._config)

    def list(self, state: str | None = None, limit: int = 50, labels: dict[str, str] | None = None,
             before: tuple[float, str] | None = None, team: str | None = None,
             search: str | None = None) -> list[dict[str, Any]]:
        """Newest first by (created_at, submission_id); page with `before` = the last item's pair."""
        rows = self._store.list_submissions(state, limit, labels=labels, before=before, team=team, search=search)
        return [{"submission_id": r.submission_id, "pipeline_id": r.pipeline_id, "state": r.state,
                 "created_at": r.created_at, "labels": r.labels, "team": r.team} for r in rows]


def open_store(home: str, kind: str = "sqlite") -> Store:
    """The registry's record: SQLite under FABRIC_HOME (durable), PostgreSQL with FABRIC_STORE=postgresql://...,
    or memory with FABRIC_STORE=memory."""
    if kind == "memory":
        return MemoryStore()
    if is_postgres_url(kind):
        return PostgresStore(kind)
    return SqliteStore(Path(home) / "fabric.db")
