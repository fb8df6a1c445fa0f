"""The registry actor: a named, detached Ray actor that accepts submissions and answers for them.

A thin shell: validation and planning are the pure `fabric.spec`/`fabric.plan`, the work is the
`fabric.execute.Engine`, the record is a `fabric.record.Store`.
"""

from __future__ import annotations

import os
import secrets
import threading
import time
from typing import Any

import ray

from fabric.errors import ConflictError, ErrorCode, SpecError
from fabric.execute.backend import RayBackend
from fabric.execute.engine import Engine
from fabric.kinds import kind_checks
from fabric.plan import compile_plan
from fabric.plan.hashing import digest
from fabric.record import MemoryStore, SubmissionRecord
from fabric.spec import load_spec, parse_runtime_params

REGISTRY_NAME = "fabric-registry"
NAMESPACE = "fabric"


def new_submission_id(now: float) -> str:
    return time.strftime("sub-%Y%m%d-%H%M%S-", time.gmtime(now)) + secrets.token_hex(3)


class Registry:
    """The actor's body (kept a plain class so it can be tested and reused in-process)."""

    def __init__(self, home: str, check_feasibility: bool = True) -> None:
        self.home = home
        self._store = MemoryStore()
        # Node images run as Ray `image_uri` containers only where the cluster opted in (podman on nodes).
        use_images = os.environ.get("FABRIC_USE_IMAGES", "") == "1"
        self._engine = Engine(self._store, home=home, control=(REGISTRY_NAME, NAMESPACE), use_images=use_images)
        # An autoscaler adds nodes that do not exist yet: FABRIC_SKIP_FEASIBILITY=1 lets such work queue.
        self._check_feasibility = check_feasibility and os.environ.get("FABRIC_SKIP_FEASIBILITY") != "1"
        self._submit_lock = threading.Lock()
        self._code: dict[str, dict[str, ray.ObjectRef]] = {}

    def ping(self) -> str:
        return "ok"

    def submit(self, spec: dict[str, Any], runtime_params: dict[str, Any] | None = None,
               job_runtime_env: dict[str, Any] | None = None,
               code: dict[str, bytes] | None = None) -> dict[str, Any]:
        """Validate, plan and start a submission; the same submission_id again returns the same one."""
        dag = load_spec(spec)
        runtime = parse_runtime_params(runtime_params)
        plan = compile_plan(dag, runtime, kind_checks())  # type: ignore[arg-type]
        runtime_dump = runtime.model_dump(mode="json", exclude_none=True)
        # "The same submission" means the same normalized spec and the same runtime params.
        request_hash = digest({"spec": dag.to_dict(), "runtime": runtime_dump})
        with self._submit_lock:  # lookup and start are one step: two racing submits start one run
            if runtime.submission_id:
                existing = self._store.get_submission(runtime.submission_id)
                if existing is not None:
                    if existing.request_hash != request_hash:
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
            now = time.time()
            submission_id = runtime.submission_id or new_submission_id(now)
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
            code_refs = {entry: ray.put(blob) for entry, blob in (code or {}).items()}
            self._engine.start(record, plan, env or None, code_refs)
        return {"submission_id": submission_id, "created": True}

    def status(self, submission_id: str) -> dict[str, Any]:
        return self._engine.status(submission_id).to_dict()

    def wait(self, submission_id: str, timeout: float | None) -> bool:
        return self._engine.wait(submission_id, timeout)

    def cancel(self, submission_id: str) -> None:
        self._engine.cancel(submission_id)

    def is_cancelled(self, submission_id: str) -> bool:
        return self._engine.is_cancelled(submission_id)

    def report_progress(self, submission_id: str, node_id: str, attempt: int, fraction: float,
                        message: str) -> None:
        self._engine.report_progress(submission_id, node_id, attempt, fraction, message)

    def result_ref(self, submission_id: str, node_id: str, out: str | None) -> list[ray.ObjectRef]:
        # Wrapped in a list so that Ray hands the caller the reference, not the (maybe large) value.
        return [self._engine.result_ref(submission_id, node_id, out)]

    def logs(self, submission_id: str, node_id: str) -> list[tuple[int, str, str | None]]:
        return self._engine.logs(submission_id, node_id)

    def list(self, state: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
        return [{"submission_id": r.submission_id, "pipeline_id": r.pipeline_id, "state": r.state,
                 "created_at": r.created_at, "labels": r.labels}
                for r in self._store.list_submissions(state, limit)]


RegistryActor = ray.remote(Registry)


def get_or_create_registry(home: str) -> Any:
    return RegistryActor.options(  # type: ignore[attr-defined]
        name=REGISTRY_NAME, namespace=NAMESPACE, lifetime="detached", get_if_exists=True,
        num_cpus=0, max_concurrency=32, max_restarts=-1,
    ).remote(home)
