"""Views of runs: the live status from a run's state machine, and finished runs kept compact in the
registry's memory (the final status and, while kept, output refs)."""

from __future__ import annotations

import json
import sys
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import ray

from fabric.errors import ErrorCode, NodeFailedError, NotFoundError
from fabric.record import AttemptStatus, NodeStatus, SubmissionStatus
from fabric.schedule import RunMachine
from fabric.states import NodeState

# An ObjectRef in its owner: the Python object, the core worker's reference-table entry and a small
# inlined value. An estimate (C++ memory is not visible to Python), on the generous side.
REF_BYTES = 1024


@dataclass(frozen=True)
class Finished:
    """A finished run, compacted: its final status as JSON (about 1 KB for a small DAG, where the live
    run's objects and Ray's lineage for them take tens of KB) and, while kept, its outputs' refs."""

    status_json: bytes
    results: dict[str, dict[str, ray.ObjectRef]] | None  # node -> out -> ref; None once released
    team: str | None = None  # the submission's, so that a team's reads are scoped without the store

    def nbytes(self) -> int:
        """Memory held: the status bytes, this entry, and each output ref (Ray's own entry per ref incl.)."""
        refs = sum(len(outs) for outs in (self.results or {}).values())
        return sys.getsizeof(self.status_json) + sys.getsizeof(self) + REF_BYTES * refs

    def status(self) -> SubmissionStatus:
        return SubmissionStatus.from_dict(json.loads(self.status_json))



def finished_result(submission_id: str, finished: Finished, node_id: str, out: str | None) -> ray.ObjectRef:
    status = finished.status()
    nodes = {n.node_id: n for n in status.nodes}
    if node_id not in nodes:
        raise NotFoundError(f"submission {submission_id} has no node {node_id!r}", code=ErrorCode.NOT_FOUND,
                            where=node_id, fix=f"nodes are: {', '.join(nodes)}")
    if not nodes[node_id].state.ok:
        raise NodeFailedError(f"node {node_id!r} is {nodes[node_id].state}, it has no result",
                              code=ErrorCode.NODE_FAILED, where=node_id,
                              fix=f"see `fabric logs {submission_id} --node {node_id}`")
    if finished.results is None:
        raise NotFoundError(f"the outputs of {submission_id} were released from the object store: only the newest "
                            "FABRIC_KEEP_RESULTS finished submissions keep theirs", code=ErrorCode.NOT_FOUND,
                            where=f"{submission_id}.{node_id}",
                            fix="read what the node wrote to its artifact dir, or raise FABRIC_KEEP_RESULTS")
    values = finished.results.get(node_id, {})
    slots = list(values)
    name = out or (slots[0] if slots else "")
    if out is None and len(slots) > 1:
        raise NotFoundError(f"node {node_id!r} has several outs {slots}; name one", code=ErrorCode.NOT_FOUND,
                            where=node_id, fix="pass out=...")
    if name not in values:
        raise NotFoundError(f"node {node_id!r} has no out {name!r}", code=ErrorCode.NOT_FOUND,
                            where=f"{node_id}.{name}", fix=f"outs are: {', '.join(slots)}")
    return values[name]


def status_of(machine: RunMachine, submission_id: str) -> SubmissionStatus:
    """The live status of a run, from its state machine."""
    plan = machine.plan
    nodes = []
    counts: dict[str, int] = {}
    for node_id in machine.node_order():  # a map's children `node[i]` right after it
        node = machine.nodes[node_id]
        counts[str(node.state)] = counts.get(str(node.state), 0) + 1
        history = tuple(
            AttemptStatus(attempt=a.number, started_at=a.started_at, ended_at=a.ended_at,
                          outcome=str(a.outcome) if a.outcome else None,
                          worker_started_at=a.report.started_at if a.report else None,
                          worker_ended_at=a.report.ended_at if a.report else None, error=a.error)
            for a in node.attempts)
        last = node.attempts[-1] if node.attempts else None
        nodes.append(NodeStatus(
            node_id=node_id, kind=node.plan.kind, state=node.state, attempts=len(node.attempts),
            queued_at=node.queued_at,
            started_at=node.attempts[0].started_at if node.attempts else None,
            ended_at=last.ended_at if last and node.state.terminal else None,
            progress=node.progress, message=node.message,
            reason=node.reason if node.state in (NodeState.SKIPPED, NodeState.CANCELLED, NodeState.QUEUED,
                                                 NodeState.RETRYING, NodeState.TIMED_OUT, NodeState.CACHED) else "",
            error=node.error if not node.state.ok else None, history=history, cost=node.cost))
    return SubmissionStatus(
        submission_id=submission_id, pipeline_id=plan.pipeline_id, state=machine.state,
        created_at=machine.created_at, ended_at=machine.ended_at, labels=dict(plan.labels),
        nodes=tuple(nodes), counts=counts, params=dict(plan.params))


def live_result(submission_id: str, machine: RunMachine, handles: Mapping[tuple[str, int], Any], node_id: str,
                out: str | None) -> Any:
    """The ObjectRef of a live run's node output, or why there is none."""
    node = machine.nodes.get(node_id)
    if node is None:
        raise NotFoundError(f"submission {submission_id} has no node {node_id!r}",
                            code=ErrorCode.NOT_FOUND, where=node_id,
                            fix=f"nodes are: {', '.join(machine.plan.order)}")
    slots = node.plan.result_slots
    name = out or slots[0]
    if out is None and len(slots) > 1:
        raise NotFoundError(f"node {node_id!r} has several outs {list(slots)}; name one",
                            code=ErrorCode.NOT_FOUND, where=node_id, fix="pass out=...")
    if name not in slots:
        raise NotFoundError(f"node {node_id!r} has no out {name!r}", code=ErrorCode.NOT_FOUND,
                            where=f"{node_id}.{name}", fix=f"outs are: {', '.join(slots)}")
    if not node.state.ok or node.token is None:
        code = ErrorCode.NOT_FINISHED if not node.state.terminal else ErrorCode.NODE_FAILED
        raise NodeFailedError(f"node {node_id!r} is {node.state}, it has no result",
                              code=code, where=node_id,
                              fix="wait for the submission" if code is ErrorCode.NOT_FINISHED
                              else f"see `fabric logs {submission_id} --node {node_id}`")
    return handles[(node_id, node.token)].values[name]


def kept_summary(finished: list[Finished]) -> dict[str, int]:
    """How many finished runs are kept in memory, how many with outputs, and the bytes they hold."""
    return {"finished": len(finished), "finished_with_results": sum(f.results is not None for f in finished),
            "finished_bytes": sum(f.nbytes() for f in finished)}


def bound_finished(finished: OrderedDict[str, Finished], keep_results: int, keep_finished: int) -> None:
    """After a run was added last: the newest `keep_results` runs keep their outputs fetchable from the object
    store, the newest `keep_finished` their status; older ones are read from the store."""
    if len(finished) > keep_results:
        older = list(finished)[-keep_results - 1] if keep_results else next(reversed(finished))
        if finished[older].results is not None:  # release its outputs to the object store
            finished[older] = Finished(finished[older].status_json, None, finished[older].team)
    while len(finished) > keep_finished:
        finished.popitem(last=False)
