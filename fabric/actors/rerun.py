"""The registry's re-run: a new submission linked to a finished one, reusing the outputs of its succeeded nodes."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import ray

from fabric.errors import ConflictError, ErrorCode, FabricError, Problem, SpecError
from fabric.execute.outputs import load_code, save_code
from fabric.execute.resume import reusable
from fabric.kinds import kind_checks
from fabric.plan import compile_plan
from fabric.plan.hashing import digest
from fabric.record import Store, SubmissionRecord
from fabric.record.ids import claim_id
from fabric.record.replay import status_from_events
from fabric.schedule.grants import TeamGrants, check_submission
from fabric.spec import load_spec, parse_runtime_params
from fabric.spec.mapping import parent_of
from fabric.states import NodeState
from fabric.types import new_submission_id

if TYPE_CHECKING:
    from fabric.actors.submit_gate import SubmitGate
    from fabric.execute.engine import Engine

RERUN_LABEL = "fabric.rerun_of"


class RerunMethods:
    """The registry actor's `rerun` (its state is the registry's)."""

    if TYPE_CHECKING:
        _store: Store
        _engine: Engine
        _artifacts: str
        _gate: SubmitGate
        _kill_switch: str | None

        def _recorded(self, submission_id: str, team: str | None = None) -> SubmissionRecord: ...

    def rerun(self, submission_id: str, from_node: str | None = None, new_id: str | None = None,
              team: str | None = None, grants: TeamGrants | None = None) -> dict[str, Any]:
        """Start a new submission of a finished one's spec and params (labelled `fabric.rerun_of`): nodes that
        SUCCEEDED there, with the same content hash and their outputs in the artifact store, are reused (shown
        CACHED, the reason naming the source); `from_node` and every node below it, and whatever failed, run
        again. The same `new_id` again returns the same re-run; `grants` are checked as for a submit."""
        old = self._recorded(submission_id, team)
        submission_id = old.submission_id  # as stored (a team's is `team:key`): its events and files are under it
        if old.state == "RUNNING":
            raise ConflictError(f"{submission_id} is still running", code=ErrorCode.NOT_FINISHED,
                                where="submission_id", fix="wait for it to end, or cancel it, then re-run it")
        new_id = new_id or new_submission_id()
        runtime_raw = {k: v for k, v in old.runtime_params.items() if k != "submission_id"}
        runtime_raw["labels"] = {**old.labels, RERUN_LABEL: submission_id}
        runtime = parse_runtime_params({**runtime_raw, "submission_id": new_id})
        dag = load_spec(old.spec)
        if grants is not None:
            check_submission(grants, old.team or "", dag, runtime)
        plan = compile_plan(dag, runtime, kind_checks())
        if from_node is not None and from_node not in plan.nodes:
            raise SpecError.from_problems([Problem(ErrorCode.NOT_FOUND, "from_node", f"no node {from_node!r}",
                                                   f"nodes are: {', '.join(plan.order)}")], what="re-run")
        before = compile_plan(dag, parse_runtime_params(old.runtime_params))
        self._store.flush()
        events = self._store.events(submission_id)
        states = {n.node_id: n.state for n in status_from_events(old, events).nodes}
        reasons = {e.node_id: e.reason for e in events if e.node_id and e.target == NodeState.CACHED}
        reuse = {n: source for n, source in reusable(plan, states, reasons, submission_id, self._artifacts,
                                                     from_node).items()
                 for key in ((parent_of(n) or (n,))[0],)  # a map's child: as its map node
                 if before.nodes[key].content_hash == plan.nodes[key].content_hash}
        if all(n in reuse for n in plan.order):
            raise ConflictError(f"every node of {submission_id} succeeded: nothing to re-run",
                                code=ErrorCode.NOT_FINISHED, where="from_node",
                                fix="name the node to re-run from (fabric rerun ID --from NODE)")
        runtime_dump = runtime.model_dump(mode="json", exclude_none=True)
        request_hash = digest({"spec": dag.to_dict(), "runtime": runtime_dump, "rerun_of": submission_id,
                               "from": from_node})
        reply = {"submission_id": new_id, "rerun_of": submission_id, "reused": sorted(reuse),
                 "rerun": [n for n in plan.order if n not in reuse]}
        with self._gate.starting(old.team, new_id):
            if self._kill_switch is not None:
                raise FabricError(f"admission is closed: {self._kill_switch}", code=ErrorCode.ADMISSION_CLOSED,
                                  where="kill-switch", fix="retry later; an admin turns the kill-switch off")
            new_id, existing = claim_id(self._store, new_id, old.team, time.time())  # a team's: `team:key`
            reply["submission_id"] = new_id
            if existing is not None:
                if existing.request_hash != request_hash:
                    raise ConflictError(f"submission_id {new_id!r} was already used for another request",
                                        code=ErrorCode.IDEMPOTENCY_CONFLICT, where="submission_id",
                                        fix="use a new submission_id")
                return {**reply, "created": False}
            record = SubmissionRecord(
                submission_id=new_id, pipeline_id=plan.pipeline_id, spec=dict(old.spec), runtime_params=runtime_dump,
                plan_hash=plan.plan_hash, request_hash=request_hash, created_at=time.time(), team=old.team,
                labels=dict(runtime.labels), runtime_env=dict(old.runtime_env))
            blobs = load_code(self._artifacts, submission_id)
            if blobs:
                save_code(self._artifacts, new_id, blobs)
            code = {entry: ray.put(blob) for entry, blob in blobs.items()}
            self._engine.start_rerun(record, plan, reuse, old.runtime_env or None, code)
        return {**reply, "created": True}
