"""The client protocol: what `fb.connect()` returns, over Ray (fabric/client.py) or HTTP (fabric/remote.py).

Both implementations have these methods with identical signatures (tests/unit/test_client_protocol.py
checks names, parameters, defaults and annotations), so code written against `fb.Client` runs
unchanged in the cluster and from a laptop through the gateway.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from fabric.record.page import Page
from fabric.record.status import SubmissionStatus
from fabric.spec import DagSpec, RuntimeParams

# What `submit` takes: a spec object, a dict, YAML/JSON text or a path to it, or an `fb.DAG`.
SpecInput = DagSpec | Mapping[str, Any] | str | Path | Any
ParamsInput = RuntimeParams | Mapping[str, Any] | None
# A list of JSON rows, named so that annotations inside a class with a `list` method still mean the builtin.
Rows = list[dict[str, Any]]


@runtime_checkable
class Submission(Protocol):
    """A handle on one submission. Every method asks the fabric; nothing is cached."""

    id: str
    created: bool  # False when the submission already existed (the same idempotency key again)

    def status(self) -> SubmissionStatus:
        """The submission and every node: state, attempts, times, progress, error."""
        ...

    def wait(self, timeout: float | None = None) -> SubmissionStatus:
        """Block until the submission ends; raise FabricError(TIMEOUT) if `timeout` passes first."""
        ...

    def result(self, node: str, out: str | None = None, timeout: float | None = None) -> Any:
        """The value of `out` (default: the node's only out) of a finished node (Ray only: values live in
        the object store; over HTTP this raises and says to read the node's artifacts instead)."""
        ...

    def logs(self, node: str, tail: int | None = None) -> str:
        """The node's captured output, every attempt; `tail`: only the last that many lines."""
        ...

    def artifacts(self) -> dict[str, Any]:
        """What the submission has in the artifact store: its report and each node's files."""
        ...

    def cancel(self) -> None:
        """Cancel the submission (idempotent); running Ray tasks are cancelled."""
        ...

    def graph(self) -> dict[str, Any]:
        """The DAG's nodes and edges, every attempt's queue wait and run time, and the critical path."""
        ...

    def lineage(self) -> list[dict[str, Any]]:
        """OpenLineage RunEvents: the submission, and each node attempt with its inputs and outputs."""
        ...


@runtime_checkable
class Client(Protocol):
    """Submit DAGs to the fabric and follow them (`fb.connect()` returns one)."""

    def submit(self, spec: SpecInput, runtime_params: ParamsInput = None) -> Submission:
        """Submit a DAG; returns at once. Every submit carries an idempotency key (`runtime_params.
        submission_id`, made up when absent), so a retried submit starts one run."""
        ...

    def get(self, submission_id: str, *, check: bool = True) -> Submission:
        """A handle on a submission; `check=False` skips asking whether it exists (and is this team's)."""
        ...

    def list(self, state: str | None = None, limit: int = 50, labels: Mapping[str, str] | None = None, *,
             search: str | None = None, cursor: str | None = None) -> Page:
        """Newest first; `search` is a substring of the pipeline or the id. The page's `next_cursor`
        (opaque, None on the last page) passed as `cursor=` gives the next page."""
        ...

    def run(self, spec: SpecInput, runtime_params: ParamsInput = None,
            timeout: float | None = None) -> SubmissionStatus:
        """Submit and wait: the notebook one-liner."""
        ...

    def artifacts(self, submission_id: str) -> dict[str, Any]:
        """What a submission has in the artifact store: its report and each node's files."""
        ...

    def artifact(self, submission_id: str, node: str | None, name: str) -> bytes:
        """An artifact's bytes: the run's `metrics.json` (node None) or a file a node wrote."""
        ...

    def kill_switch(self, on: bool | None = None, reason: str = "", actor: str = "") -> dict[str, Any]:
        """Read it (`on=None`), or turn it on (nothing new admitted, running work goes on) or off.
        Over HTTP this needs an admin token, and the token's team is recorded beside `actor`."""
        ...

    def drain(self, timeout: float = 600.0, actor: str = "") -> dict[str, Any]:
        """Close admission, wait up to `timeout` s for running submissions, and report what finished."""
        ...

    def workers(self) -> Rows:
        """The Ray nodes: resources, pools, load, busy or idle."""
        ...

    def queues(self) -> dict[str, Any]:
        """Admission's queue (this team's nodes when team-scoped), the depth per pool and priority, and
        the budgets."""
        ...

    def metrics_text(self) -> str:
        """fabric's metrics as Prometheus text."""
        ...

    def ping(self) -> bool:
        """Whether the registry answers."""
        ...

    # -- the pipeline catalogue (docs/pipelines.md) ------------------------------------------------------

    def register(self, spec: SpecInput, max_active_runs: int | None = None, overlap: str = "skip") -> dict[str, Any]:
        """Register a spec under its pipeline_id as a new immutable version (the same spec and options as the
        latest version return that one, `created` false); `max_active_runs` and `overlap` (skip,
        cancel_older or queue) govern runs started by name."""
        ...

    def pipelines(self) -> Rows:
        """This team's registered pipelines, each at its latest version."""
        ...

    def pipeline_versions(self, pipeline_id: str) -> Rows:
        """Every version of a pipeline, newest first, with its spec."""
        ...

    def pipeline_runs(self, pipeline_id: str, limit: int = 20) -> Rows:
        """The pipeline's recent runs started by name, newest first: id, state, version, params."""
        ...

    def run_pipeline(self, pipeline_id: str, params: Mapping[str, Any] | None = None, *, version: int | None = None,
                     runtime_params: ParamsInput = None) -> dict[str, Any]:
        """Start a run of a registered pipeline (default: its latest version) with these pipeline params.
        Answers {submission_id, created, version, skipped, cancelled}: `skipped` when max_active_runs is
        reached with overlap skip; `cancelled` the older runs that overlap cancel_older stopped; `queued`
        and `position` when overlap queue holds it until a run ends."""
        ...

    def rerun(self, submission_id: str, from_node: str | None = None) -> Submission:
        """Re-run a finished submission as a new one (labelled `fabric.rerun_of`): nodes that SUCCEEDED there
        keep their outputs (shown CACHED, the reason naming where from); `from_node` and every node below it,
        and whatever did not succeed, run again."""
        ...

    def schedule(self, pipeline_id: str, schedule: Mapping[str, Any]) -> dict[str, Any]:
        """Create or change a schedule of a registered pipeline: {name, cron, timezone, params, version, start,
        end, catch_up, max_catch_up, paused} (docs/pipelines.md); answers it with its next fire times."""
        ...

    def schedules(self, pipeline_id: str | None = None) -> Rows:
        """This team's schedules (of one pipeline), each with its last tick and next fire times."""
        ...

    def pause_schedule(self, pipeline_id: str, name: str, paused: bool = True) -> dict[str, Any]:
        """Pause a schedule, or resume it (`paused=False`): ticks that passed while paused are not fired."""
        ...

    def trigger(self, pipeline_id: str, key: str, params: Mapping[str, Any] | None = None, *,
                version: int | None = None) -> dict[str, Any]:
        """An event trigger: start a run by name whose submission id derives from the pipeline and the
        idempotency `key`, so the same key again answers the same run (`created` false), never a second one."""
        ...

    def backfill(self, pipeline_id: str, start: str | dt.date, end: str | dt.date, *, step: str = "1d",
                 params: Mapping[str, Any] | None = None, date_param: str = "as_of", max_active: int = 4,
                 version: int | None = None, backfill_id: str | None = None) -> dict[str, Any]:
        """Start a backfill: one run per date from start to end (included) every `step` (Nd, Nw, Nb), the date
        in `date_param`, at most `max_active` at once; dates whose identical run already SUCCEEDED are
        skipped. Answers its status: {backfill_id, state, total, counts, runs}."""
        ...

    def backfill_status(self, backfill_id: str) -> dict[str, Any]:
        """A backfill's state, its counts per state and each date's run."""
        ...

    def backfills(self, pipeline_id: str | None = None) -> Rows:
        """This team's backfills (of one pipeline), newest first, with their counts."""
        ...

    def cancel_backfill(self, backfill_id: str) -> dict[str, Any]:
        """Cancel a backfill as a whole: no more dates start and its running runs are cancelled."""
        ...


def registrable_spec(spec: SpecInput) -> dict[str, Any]:
    """The raw spec to register: a catalogue keeps specs, not notebook code, so an `fb.DAG` whose functions
    live in the notebook is refused (both clients share this)."""
    from fabric.errors import ErrorCode, FabricError
    from fabric.spec import read_spec

    if hasattr(spec, "to_spec"):  # an fb.DAG
        dag: Any = spec
        if dag.inline_code():
            raise FabricError("this DAG's functions are defined in the notebook; a registered pipeline keeps only "
                              "its spec", code=ErrorCode.SPEC_FIELD, where="entrypoint",
                              fix="put the functions in a module the cluster has (an image, or runtime_env "
                                  "working_dir / py_modules) and refer to them by entrypoint")
        spec = dag.to_spec()
    return read_spec(spec)


def pipeline_run_params(params: Mapping[str, Any] | None, runtime_params: ParamsInput) -> dict[str, Any]:
    """The runtime params of a run by name: `params` over `runtime_params.params`, and an idempotency key
    made once here, so that a retried start starts one run."""
    from fabric.types import new_submission_id

    if isinstance(runtime_params, RuntimeParams):
        runtime_params = runtime_params.model_dump(mode="json", exclude_none=True)
    runtime = dict(runtime_params or {})
    if params:
        runtime["params"] = {**dict(runtime.get("params") or {}), **dict(params)}
    runtime.setdefault("submission_id", new_submission_id())
    return runtime


def backfill_request(start: str | dt.date, end: str | dt.date, step: str, params: Mapping[str, Any] | None,
                     date_param: str, max_active: int, version: int | None,
                     backfill_id: str | None) -> dict[str, Any]:
    """A backfill's request as both clients send it, with its backfill_id made once here (a retried call
    makes one backfill)."""
    from fabric.schedule.backfill import new_backfill_id

    return {"start": str(start), "end": str(end), "step": step, "params": dict(params or {}),
            "date_param": date_param, "max_active": max_active, "version": version,
            "backfill_id": backfill_id or new_backfill_id()}


__all__ = ["Client", "Page", "ParamsInput", "Rows", "SpecInput", "Submission", "backfill_request",
           "pipeline_run_params", "registrable_spec"]
