"""The Ray side of the client protocol: `connect()` (the only `ray.init`), `RayClient` and `RaySubmission`."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import ray

from fabric.actors import served as owned
from fabric.actors.calls import acall_registry as _acall
from fabric.actors.calls import call_registry as _call
from fabric.actors.control import get_or_create_registry
from fabric.actors.guard import verified
from fabric.actors.owners import ServedClient
from fabric.actors.registry import REGISTRY_NAME
from fabric.actors.revive import remember_home
from fabric.capability import control_cap, impostor, load_or_create_key
from fabric.errors import ErrorCode, FabricError
from fabric.execute.foreign import foreign_value
from fabric.local_ray import init_address, prepare_env
from fabric.protocol import (
    Client,
    Page,
    ParamsInput,
    Rows,
    SpecInput,
    Submission,
    backfill_request,
    pipeline_run_params,
    registrable_spec,
)
from fabric.record import SubmissionStatus
from fabric.record.page import decode_cursor, next_cursor
from fabric.retry import REGISTRY_RESTART_WAIT_S
from fabric.schedule.backfill import TRIGGER_LABEL, trigger_submission_id
from fabric.schedule.grants import TeamGrants
from fabric.settings import Settings, settings
from fabric.spec import RuntimeParams, load_spec, parse_runtime_params, read_document, read_spec
from fabric.spec.backfills import parse_backfill
from fabric.spec.policy import Principal
from fabric.spec.teams import Role, TeamConfig
from fabric.types import new_submission_id


def default_home() -> str:
    return settings().home



class RaySubmission:
    """A `Submission` through Ray: every method asks the registry actor; nothing is cached or hidden."""

    def __init__(self, registry: Any, submission_id: str, created: bool = True, team: str | None = None,
                 retry_for: float = REGISTRY_RESTART_WAIT_S, *, cap: str = "", own: bool = False) -> None:
        self._registry = registry
        self._cap = cap  # the control capability (fabric/capability.py): shown on every call
        self._own = own  # submitted by this driver (its own code): its values are opened as they are
        self._retry_for = retry_for
        self.id = submission_id
        self.created = created
        self._team = team

    def __repr__(self) -> str:
        return f"RaySubmission({self.id!r})"

    def status(self) -> SubmissionStatus:
        reply = _call(self._registry.status, self._cap, self.id, self._team, retry_for=self._retry_for)
        return SubmissionStatus.from_dict(reply)

    async def status_async(self) -> SubmissionStatus:
        """`status()` for code that runs in an event loop."""
        reply = await _acall(self._registry.status, self._cap, self.id, self._team, retry_for=self._retry_for)
        return SubmissionStatus.from_dict(reply)

    def wait(self, timeout: float | None = None) -> SubmissionStatus:
        """Block until the submission ends; raise FabricError(TIMEOUT) if `timeout` passes first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
            step = 30.0 if left is None else min(left, 30.0)
            if _call(self._registry.wait, self._cap, self.id, step, self._team, timeout=step + 30,
                     retry_for=self._retry_for):
                return self.status()
            if deadline is not None and time.monotonic() >= deadline:
                raise FabricError(f"submission {self.id} did not finish within {timeout}s",
                                  code=ErrorCode.TIMEOUT, where=self.id,
                                  fix="wait longer, or check `fabric status` for a stuck node")

    def result(self, node: str, out: str | None = None, timeout: float | None = None) -> Any:
        """The value of `out` (default: the node's only out) of a finished node, from the object store. A value is
        its code's pickle and this process holds the control key: one of a submission neither this client's team's
        nor this driver's is opened as plain data only, else UNSAFE_PAYLOAD (docs/security.md)."""
        ref, *team = _call(self._registry.result_ref, self._cap, self.id, node, out, self._team,
                           retry_for=self._retry_for)
        own = self._own or (team and team[0] == self._team)
        return ray.get(ref, timeout=timeout) if own else foreign_value(ref, f"{self.id}.{node}", team[:1], timeout)

    def logs(self, node: str, tail: int | None = None) -> str:
        """The node's captured stdout, stderr and `fabric.context().logger` lines, every attempt."""
        parts = []
        entries = _call(self._registry.logs, self._cap, self.id, node, self._team, retry_for=self._retry_for)
        for attempt, text, path in entries:
            parts.append(f"--- attempt {attempt}" + (f" ({path})" if path else "") + " ---\n" + text)
        text = "".join(parts)
        return text if tail is None else "\n".join(text.splitlines()[-tail:])

    def artifacts(self) -> dict[str, Any]:
        """What this submission has in the artifact store: its report and each node's files."""
        return _call(self._registry.artifacts, self._cap, self.id, self._team, retry_for=self._retry_for)

    def cancel(self) -> None:
        _call(self._registry.cancel, self._cap, self.id, self._team, retry_for=self._retry_for)

    def graph(self) -> dict[str, Any]:
        """The DAG's nodes and edges, every attempt's queue wait and run time, and the critical path."""
        return _call(self._registry.graph, self._cap, self.id, self._team, retry_for=self._retry_for)

    def lineage(self) -> list[dict[str, Any]]:
        """OpenLineage RunEvents: the submission, and each node attempt with its inputs and outputs."""
        return _call(self._registry.lineage, self._cap, self.id, self._team, retry_for=self._retry_for)


class RayClient(ServedClient):
    """A `Client` on a Ray cluster: submit DAGs to the registry actor and follow them.

    A client scoped to a `team` stamps the team on what it submits and sees only that team's work.
    (Code with direct Ray access reaches the registry's handle, but not its methods: they need the control
    capability that only drivers hold, docs/security.md.)"""

    def __init__(self, registry: Any, team: str | None = None, retry_for: float = REGISTRY_RESTART_WAIT_S,
                 grants: TeamGrants | None = None, *, cap: str = "", role: Role | str | None = None,
                 config: TeamConfig | None = None, trusted_driver_env: bool = False) -> None:
        self._registry = registry
        self._cap = cap  # the control capability (fabric/capability.py): never handed to a task
        self._retry_for = retry_for  # how long a call waits for a restarting registry before it raises
        self.team = team
        self._grants = grants  # checked by the registry on every submit (fabric/schedule/grants.py)
        # A team-scoped client submits under the code policy (fabric/spec/policy.py) as its role, a developer
        # unless told otherwise; without a team (fabric run, the SDK on its own Ray) nothing is checked.
        self._guard = None if team is None else owned.Guard(
            Principal(team, Role(role) if role else Role.DEVELOPER), config or TeamConfig(), self, trusted_driver_env)

    def for_team(self, team: str, grants: TeamGrants | None = None, *, role: Role | str | None = None,
                 config: TeamConfig | None = None, trusted_driver_env: bool = False) -> RayClient:
        """The same connection, scoped to one team (the gateway makes one per authenticated request, with the
        team's grants and config from its tokens file and its token's role; its own runtime_env is trusted)."""
        return RayClient(self._registry, team, self._retry_for, grants, cap=self._cap, role=role, config=config,
                         trusted_driver_env=trusted_driver_env)

    def submit(self, spec: SpecInput, runtime_params: ParamsInput = None) -> Submission:
        """Submit a spec (object, dict, YAML/JSON text or path, or an `fb.DAG`); returns at once."""
        args, claims = self._submit_args(spec, runtime_params)
        reply = owned.guarded(self._guard, claims, lambda: _call(self._registry.submit, self._cap, *args,
                                                                        retry_for=self._retry_for))
        return RaySubmission(self._registry, reply["submission_id"], reply["created"], self.team, self._retry_for,
                             cap=self._cap, own=True)

    async def submit_async(self, spec: SpecInput, runtime_params: ParamsInput = None, *,
                           from_wire: bool = False) -> RaySubmission:
        """`submit()` for code that runs in an event loop. `from_wire`: the spec came over the network, so text is
        only ever a document (never a path), and it is validated here first: bad input costs this process a thread
        for a moment, never the registry."""
        # YAML text (up to 1 MiB at the gateway) is parsed, and the policy checked, off the event loop, in one hop.
        args, claims = (await asyncio.to_thread(self._submit_args, spec, runtime_params, from_wire)
                        if isinstance(spec, str | bytes) or self._guard or from_wire
                        else self._submit_args(spec, runtime_params))
        reply = await owned.guarded_async(self._guard, claims, lambda: _acall(
            self._registry.submit, self._cap, *args, retry_for=self._retry_for))
        return RaySubmission(self._registry, reply["submission_id"], reply["created"], self.team, self._retry_for,
                             cap=self._cap, own=True)

    def _submit_args(self, spec: Any, runtime_params: ParamsInput, from_wire: bool = False
                     ) -> tuple[tuple[Any, ...], list[Any]]:
        code: dict[str, bytes] = {}
        if from_wire:
            spec = read_document(spec)
            load_spec(spec)
            parse_runtime_params(runtime_params)
        elif hasattr(spec, "to_spec"):  # an fb.DAG built in Python
            code = spec.inline_code()
            spec = spec.to_spec()
        # Files and text are read here, where their paths mean something; the registry validates once.
        raw = read_spec(spec)
        if isinstance(runtime_params, RuntimeParams):
            runtime_params = runtime_params.model_dump(mode="json", exclude_none=True)
        params = dict(runtime_params or {})
        if self.team is not None:
            if params.get("team") not in (None, self.team):
                raise FabricError(f"runtime_params.team {params['team']!r} is not this client's team {self.team!r}",
                                  code=ErrorCode.FORBIDDEN, where="runtime_params.team",
                                  fix="leave team out: it comes from your credentials")
            params["team"] = self.team
        # Always send an idempotency key, so a submit retried across a registry restart starts one run.
        params.setdefault("submission_id", new_submission_id())
        job_env = _job_runtime_env()  # what a guard refuses is refused here, before anything is stored
        claims = self._guard.check(raw, params, code.keys(), job_env) if self._guard else []
        return (raw, params, job_env, code, self._grants), claims

    def get(self, submission_id: str, *, check: bool = True) -> Submission:
        """A handle on a submission; `check=False` skips asking the registry whether it exists (and
        is this team's) now: the handle's first call answers that instead."""
        if check:
            # NotFoundError if unknown (or not ours)
            _call(self._registry.status, self._cap, submission_id, self.team, retry_for=self._retry_for)
        return RaySubmission(self._registry, submission_id, created=False, team=self.team, retry_for=self._retry_for,
                             cap=self._cap)

    def list(self, state: str | None = None, limit: int = 50, labels: Mapping[str, str] | None = None, *,
             search: str | None = None, cursor: str | None = None) -> Page:
        """Newest first; pass a page's `next_cursor` as `cursor=` for the next one."""
        before = None if cursor is None else decode_cursor(cursor)  # a bad cursor fails here, before any call
        items = _call(self._registry.list, self._cap, state, limit, dict(labels) if labels else None, before, self.team,
                      search, retry_for=self._retry_for)
        return Page(items, next_cursor(items, limit))

    def kill_switch(self, on: bool | None = None, reason: str = "", actor: str = "") -> dict[str, Any]:
        """Read it, or turn it on (nothing new admitted, running work goes on) or off."""
        return _call(self._registry.kill_switch, self._cap, on, reason, actor or (self.team or ""),
                     retry_for=self._retry_for)

    def drain(self, timeout: float = 600.0, actor: str = "") -> dict[str, Any]:
        """Close admission, wait for running submissions, and report what finished."""
        return _call(self._registry.drain, self._cap, timeout, actor or (self.team or ""), timeout=timeout + 60,
                     retry_for=self._retry_for)

    def workers(self) -> Rows:
        """The Ray nodes: resources, pools, load, busy or idle."""
        return _call(self._registry.workers, self._cap, retry_for=self._retry_for)

    def queues(self) -> dict[str, Any]:
        """Admission's queue (this team's nodes when the client is team-scoped) and the budgets."""
        return _call(self._registry.queues, self._cap, self.team, retry_for=self._retry_for)

    def metrics_text(self) -> str:
        """fabric's metrics (queues, waits, run times, GPUs per team, retries…) as Prometheus text."""
        return _call(self._registry.metrics_text, self._cap, retry_for=self._retry_for)

    def artifact(self, submission_id: str, node: str | None, name: str) -> bytes:
        """An artifact's bytes: the run's `metrics.json` (node None) or a file a node wrote to its artifact dir."""
        return _call(self._registry.artifact, self._cap, submission_id, node, name, self.team,
                     retry_for=self._retry_for)

    def artifacts(self, submission_id: str) -> dict[str, Any]:
        """What a submission has in the artifact store: its report and each node's files."""
        return _call(self._registry.artifacts, self._cap, submission_id, self.team, retry_for=self._retry_for)

    def ping(self) -> bool:
        return _call(self._registry.ping, timeout=5, retry_for=self._retry_for) == "ok"

    def run(self, spec: SpecInput, runtime_params: ParamsInput = None,
            timeout: float | None = None) -> SubmissionStatus:
        """Submit and wait: the notebook one-liner."""
        return self.submit(spec, runtime_params).wait(timeout)

    def register(self, spec: SpecInput, max_active_runs: int | None = None, overlap: str = "skip") -> dict[str, Any]:
        """Register a spec as the pipeline's next version (the same again: the same version)."""
        options = {"max_active_runs": max_active_runs, "overlap": overlap}
        raw = registrable_spec(spec)
        if self._guard:  # what the team's runners could start by name later is checked now too
            self._guard.check(raw, {"team": self.team})
        return _call(self._registry.register_pipeline, self._cap, raw, options, self.team,
                     self._grants, retry_for=self._retry_for)

    def pipelines(self) -> Rows:
        """This team's registered pipelines, each at its latest version."""
        return _call(self._registry.pipelines, self._cap, self.team, retry_for=self._retry_for)

    def pipeline_versions(self, pipeline_id: str) -> Rows:
        """Every version of a pipeline, newest first, with its spec."""
        return _call(self._registry.pipeline_versions, self._cap, pipeline_id, self.team, retry_for=self._retry_for)

    def pipeline_runs(self, pipeline_id: str, limit: int = 20) -> Rows:
        """The pipeline's recent runs started by name, newest first."""
        return _call(self._registry.pipeline_runs, self._cap, pipeline_id, limit, self.team, retry_for=self._retry_for)

    def run_pipeline(self, pipeline_id: str, params: Mapping[str, Any] | None = None, *, version: int | None = None,
                     runtime_params: ParamsInput = None) -> dict[str, Any]:
        """Start a run of a registered pipeline by name; see `Client.run_pipeline`."""
        runtime = pipeline_run_params(params, runtime_params)
        if self.team is not None and runtime.get("team") not in (None, self.team):
            raise FabricError(f"runtime_params.team {runtime['team']!r} is not this client's team {self.team!r}",
                              code=ErrorCode.FORBIDDEN, where="runtime_params.team",
                              fix="leave team out: it comes from your credentials")
        claims = self._guard.check(owned.pick_version(self.pipeline_versions(pipeline_id), version),
                                   {**runtime, "team": self.team}) if self._guard else []  # what it would run
        return cast(dict[str, Any], owned.guarded(self._guard, claims, lambda: _call(
            self._registry.run_pipeline, self._cap, pipeline_id, version, runtime, self.team, self._grants,
            retry_for=self._retry_for)))

    def rerun(self, submission_id: str, from_node: str | None = None) -> Submission:
        """Re-run a finished submission, reusing its succeeded nodes' outputs; see `Client.rerun`."""
        # The new id is made here, once: a call retried across a registry restart starts one re-run.
        reply = self.rerun_reply(submission_id, from_node, new_submission_id())
        return RaySubmission(self._registry, reply["submission_id"], reply["created"], self.team, self._retry_for,
                             cap=self._cap, own=True)

    def rerun_reply(self, submission_id: str, from_node: str | None, new_id: str | None) -> dict[str, Any]:
        """The registry's whole answer to a re-run: {submission_id, created, rerun_of, reused, rerun}."""
        return _call(self._registry.rerun, self._cap, submission_id, from_node, new_id, self.team, self._grants,
                     retry_for=self._retry_for)

    def schedule(self, pipeline_id: str, schedule: Mapping[str, Any]) -> dict[str, Any]:
        """Create or change a schedule of a registered pipeline; see `Client.schedule`."""
        return _call(self._registry.put_schedule, self._cap, pipeline_id, dict(schedule), self.team, self._grants,
                     retry_for=self._retry_for)

    def schedules(self, pipeline_id: str | None = None) -> Rows:
        """This team's schedules, each with its last tick and next fire times."""
        return _call(self._registry.schedules, self._cap, pipeline_id, self.team, retry_for=self._retry_for)

    def pause_schedule(self, pipeline_id: str, name: str, paused: bool = True) -> dict[str, Any]:
        """Pause a schedule, or resume it (ticks passed meanwhile are not fired)."""
        return _call(self._registry.pause_schedule, self._cap, pipeline_id, name, paused, self.team,
                     retry_for=self._retry_for)

    def trigger(self, pipeline_id: str, key: str, params: Mapping[str, Any] | None = None, *,
                version: int | None = None) -> dict[str, Any]:
        """An event trigger: a run by name whose id derives from the key; see `Client.trigger`."""
        sid = trigger_submission_id(pipeline_id, key)
        return self.run_pipeline(pipeline_id, params, version=version, runtime_params={
            "submission_id": sid, "labels": {TRIGGER_LABEL: key}})

    def backfill(self, pipeline_id: str, start: str | dt.date, end: str | dt.date, *, step: str = "1d",
                 params: Mapping[str, Any] | None = None, date_param: str = "as_of", max_active: int = 4,
                 version: int | None = None, backfill_id: str | None = None) -> dict[str, Any]:
        """One run per date, at most max_active at once; see `Client.backfill`."""
        request = backfill_request(start, end, step, params, date_param, max_active, version, backfill_id)
        parse_backfill(request)  # a 422 naming the field before anything else is asked
        if self._guard:  # the policy, on what its runs will run (they start later, in the registry)
            spec = owned.pick_version(self.pipeline_versions(pipeline_id), version)
            if self._guard.check(spec, {"team": self.team, "params": {**request["params"],
                                                                       date_param: request["start"]}}):
                raise FabricError("a backfill cannot deploy served models", code=ErrorCode.SPEC_FIELD,
                                  where="pipeline_id", fix="start runs of a serve or promote pipeline one by one")
        return _call(self._registry.backfill, self._cap, pipeline_id, request, self.team, self._grants,
                     retry_for=self._retry_for)

    def backfill_status(self, backfill_id: str) -> dict[str, Any]:
        return _call(self._registry.backfill_status, self._cap, backfill_id, self.team, retry_for=self._retry_for)

    def backfills(self, pipeline_id: str | None = None) -> Rows:
        return _call(self._registry.backfills, self._cap, pipeline_id, self.team, retry_for=self._retry_for)

    def cancel_backfill(self, backfill_id: str) -> dict[str, Any]:
        return _call(self._registry.cancel_backfill, self._cap, backfill_id, self.team, retry_for=self._retry_for)


def _job_runtime_env() -> dict[str, Any]:
    """This driver's own Ray runtime_env (e.g. `ray job submit --working-dir`), already uploaded, so
    nodes see the same code as the process that submitted them."""
    env = ray.get_runtime_context().runtime_env
    return {k: v for k, v in dict(env).items() if k in ("working_dir", "py_modules", "env_vars", "pip")}


def connect(address: str | None = None, *, num_cpus: int | None = None, num_gpus: int | None = None,
            resources: dict[str, float] | None = None, home: str | None = None,
            runtime_env: dict[str, Any] | None = None, team: str | None = None, token: str | None = None,
            retry_for: float = REGISTRY_RESTART_WAIT_S, control_key_file: str | None = None,
            role: str | None = None, team_config: TeamConfig | None = None, **ray_init_kwargs: Any) -> Client:
    """Start or join Ray and get a Client. `address=None` joins a running local cluster or starts one;
    `"local"` always starts a fresh one; `"auto"` or `"host:port"` joins an existing cluster.

    `"http://host:8000"` (with `token=`, default $FABRIC_TOKEN) goes through the gateway instead: the
    same Client and Submission methods over HTTP, no Ray on this side, the team from the token.

    `retry_for`: how long a call waits for a restarting registry before it raises. `control_key_file`: where the
    head's control key is (default FABRIC_CONTROL_KEY_FILE, else `<home>/control.key`, made there if missing).
    `team=` scopes the client; its submissions pass the code policy as `role` (default developer) under
    `team_config` (docs/security.md): a guard against mistakes, since a process with the key is trusted."""
    if role is not None and team is None:
        raise TypeError("role applies to a team-scoped client: give team= too")
    if address is not None and address.startswith(("http://", "https://")):
        from fabric.remote import HttpClient

        return HttpClient(address, token or settings().token, retry_for=retry_for)
    if not ray.is_initialized():
        # Seconds, not minutes: a stale recorded local Ray is replaced by a fresh one, a dead named one stops here.
        address = init_address(address)
        prepare_env(address)  # token auth to join by address; a Ray started here guards in its Serve proxies
        ray_init_kwargs.setdefault("include_dashboard", False)
        ray_init_kwargs.setdefault("log_to_driver", False)
        # Sizes only make sense when a local cluster is started; Ray says so clearly otherwise.
        sizes: dict[str, Any] = {"num_cpus": num_cpus, "num_gpus": num_gpus, "resources": resources}
        ray.init(address=address, runtime_env=runtime_env,
                 **{k: v for k, v in sizes.items() if v is not None}, **ray_init_kwargs)
    # The control key is read (or, on a fresh head, made) here: this process is a driver, and tasks never see it.
    # A process that connected before, with no other home or key named now, keeps the key it connected with.
    key_file = control_key_file or (_connected.get("key_file") if home is None else None)
    home = home or default_home()
    key_file = key_file or Settings.from_env(home=home).control_key_file
    key = load_or_create_key(Path(key_file))
    registry = get_or_create_registry(home)
    try:
        ping = registry.ping
    except AttributeError:
        raise impostor(REGISTRY_NAME, "it has no `ping` method: something else was started under fabric's name") \
            from None
    _call(ping, timeout=120)
    verified(registry, key, REGISTRY_NAME)  # a squatter under the registry's name is refused before it is told anything
    remember_home(registry, key)  # to start a new registry, on the same record, if this one dies for good
    _connected["key_file"] = key_file
    return RayClient(registry, team, retry_for, cap=control_cap(key), role=role, config=team_config)


_connected: dict[str, str] = {}


def connected_key_file() -> str | None:
    """The control key file this process connected with (the gateway it starts reads the same one)."""
    return _connected.get("key_file")
