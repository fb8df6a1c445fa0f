"""Carrying on a submission an earlier registry left running, and re-running a finished one: which nodes count as
done (their outputs reused), which run again."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from fabric.execute.live import LiveRun
from fabric.execute.outputs import has_outputs
from fabric.execute.ports import AttemptHandle, Backend, Start
from fabric.plan import ExecutionPlan
from fabric.record import Event, Store, SubmissionRecord, SubmissionStatus
from fabric.schedule import RunMachine
from fabric.spec.mapping import parent_of
from fabric.states import NodeState

INTERRUPTED = "interrupted: the registry restarted; it runs again, not charged to its retries"


def restored_machine(record: SubmissionRecord, plan: ExecutionPlan, status: SubmissionStatus, artifacts: str,
                     clock: Callable[[], float], *, gated: bool
                     ) -> tuple[RunMachine, list[Event], list[str], dict[str, str]]:
    """The run's state machine as the record left it; the events of successes recovered from stored
    outputs; the succeeded nodes that must run again because their outputs are not on record; and where the
    outputs of each node that keeps them are (its own submission, or for a re-run's reused node, the source)."""
    sid = record.submission_id
    consumed = plan.consumed_outs()
    for node in status.nodes:  # a map's child persists every out of its map (execute/mapping.py)
        found = parent_of(node.node_id)
        if found is not None and found[0] in plan.nodes:
            consumed[node.node_id] = plan.nodes[found[0]].result_slots
    states = {n.node_id: n.state for n in status.nodes if n.node_id in consumed}
    # A re-run's reused node (CACHED, "reused: the outputs of <source> ...") keeps reading them from its source.
    sources = {n.node_id: _reused_from(n.reason) or sid if n.state is NodeState.CACHED else sid
               for n in status.nodes}
    stored = {n for n in states if consumed[n] and has_outputs(artifacts, sources[n], n)}
    # Outputs are written only by a successful attempt: they prove a success whose event was lost.
    recovered = [n for n in stored if not states[n].terminal]
    for node_id in recovered:
        states[node_id] = NodeState.SUCCEEDED
    events = [Event(sid, n, "RUNNING", "SUCCEEDED", clock(), 0, "recovered: its outputs were on record")
              for n in recovered]
    # An attempt that was running when the registry died died with it (Ray stops the tasks of a dead owner):
    # the audit says so, or a replay would hold its resources for ever.
    open_attempts = {n.node_id: len(n.history) for n in status.nodes
                     if n.state is NodeState.RUNNING and n.node_id not in recovered}
    events += [Event(sid, n, "RUNNING", "QUEUED", clock(), attempt, INTERRUPTED)
               for n, attempt in open_attempts.items()]
    rerun = [n for n, state in states.items() if state.ok and consumed[n] and n not in stored]
    for node_id in rerun:
        states[node_id] = NodeState.PENDING
    history = {n.node_id: [(a.started_at, a.ended_at, a.outcome) for a in n.history] for n in status.nodes}
    machine = RunMachine.restore(plan, clock, submission_id=sid, created_at=record.created_at, states=states,
                                 history=history, gated=gated)
    for node in status.nodes:  # the status keeps saying where a reused node's outputs came from
        if (node.state is NodeState.CACHED and states.get(node.node_id) is NodeState.CACHED
                and node.node_id in machine.nodes):
            machine.nodes[node.node_id].reason = node.reason
    machine.stash_reasons({n.node_id: n.reason for n in status.nodes  # a map's reused children, once expanded
                           if n.state is NodeState.CACHED and n.node_id not in machine.nodes})
    return machine, events, rerun, {n: sources[n] for n in stored}


REUSED = "reused: the outputs of {source} (SUCCEEDED there, same content hash)"
_REUSED = re.compile(r"^reused: the outputs of (\S+) ")


def _reused_from(reason: str | None) -> str | None:
    found = _REUSED.match(reason or "")
    return found.group(1) if found else None


def reusable(plan: ExecutionPlan, states: Mapping[str, NodeState], reasons: Mapping[str, str], submission_id: str,
             artifacts: str, from_node: str | None = None) -> dict[str, str]:
    """For a re-run of `submission_id` (its node states and CACHED reasons given): node -> the submission whose
    outputs it reuses. A node is reused when it SUCCEEDED there (or was itself reused by that run, from the
    same source), its outputs that others read are in the artifact store, it is not `from_node` or below it,
    and every node upstream of it is reused too; everything else runs again."""
    again = set() if from_node is None else {from_node, *plan.descendants(from_node)}
    consumed = plan.consumed_outs()
    reuse: dict[str, str] = {}
    for node_id in plan.order:
        state = states.get(node_id)
        source = submission_id
        if state is NodeState.CACHED:
            reused_from = _reused_from(reasons.get(node_id))
            if reused_from is None:
                continue  # a cache hit: its outputs are the cache's; it runs again (and may hit the cache)
            source = reused_from
        elif state is not NodeState.SUCCEEDED:
            continue
        if node_id in again or any(u not in reuse for u in plan.nodes[node_id].upstream):
            continue
        if plan.nodes[node_id].on_exit:
            continue  # an exit hook runs for the re-run's own outcome
        if consumed[node_id] and not has_outputs(artifacts, source, node_id):
            continue
        reuse[node_id] = source
    reuse.update(reusable_children(plan, states, reasons, submission_id, artifacts, reuse, again))
    return reuse


def reusable_children(plan: ExecutionPlan, states: Mapping[str, NodeState], reasons: Mapping[str, str],
                      submission_id: str, artifacts: str, reuse: Mapping[str, str], again: set[str]) -> dict[str, str]:
    """The children of map nodes that run again, on the same items (everything upstream reused), whose own run
    SUCCEEDED (or reused) with its outputs on record: a re-run runs only the children that did not."""
    children: dict[str, str] = {}
    for child, state in states.items():
        found = parent_of(child)
        if found is None or found[0] in reuse or found[0] in again or found[0] not in plan.nodes:
            continue
        if any(u not in reuse for u in plan.nodes[found[0]].upstream):
            continue
        source = submission_id
        if state is NodeState.CACHED:
            match = _REUSED.match(reasons.get(child, ""))
            if match is None:
                continue
            source = match.group(1)
        elif state is not NodeState.SUCCEEDED:
            continue
        if has_outputs(artifacts, source, child):
            children[child] = source
    return children


def reused_run(record: SubmissionRecord, plan: ExecutionPlan, reuse: Mapping[str, str],
               runtime_env: dict[str, Any] | None, code: dict[str, Any] | None, backend: Backend, artifacts: str,
               persist_outputs: bool, clock: Callable[[], float], *, gated: bool) -> tuple[LiveRun, list[Event]]:
    """A new run (a re-run) whose nodes in `reuse` (node -> the submission whose outputs it takes) start
    CACHED, their outputs loaded from the artifact store; and the events that say so. The rest start PENDING."""
    states = dict.fromkeys(reuse, NodeState.CACHED)
    machine = RunMachine.restore(plan, clock, submission_id=record.submission_id, created_at=record.created_at,
                                 states=states, history={}, gated=gated)
    events = [Event(record.submission_id, n, "PENDING", "CACHED", clock(), 0, REUSED.format(source=source))
              for n, source in reuse.items()]
    for event in events:  # the live status says it too, as the audit does (a map's children once they exist)
        if event.node_id in machine.nodes:
            machine.nodes[event.node_id].reason = event.reason
    machine.stash_reasons({e.node_id: e.reason for e in events if e.node_id and e.node_id not in machine.nodes})
    run = LiveRun(record, plan, machine, runtime_env, dict(code or {}), plan.persisted_outs(persist_outputs))
    consumed = plan.consumed_outs()
    for node_id, token in machine.restored_tokens().items():
        if consumed[node_id]:
            refs = backend.load(artifacts, reuse[node_id], node_id, consumed[node_id])
            run.handles[(node_id, token)] = AttemptHandle(None, refs, 0)
    return run, events


class Reruns:
    """The engine's `resume` and `start_rerun` (its state is the engine's: store, backend, artifacts, runs, inbox)."""

    if TYPE_CHECKING:
        _store: Store
        _backend: Backend
        _artifacts: str
        _persist_outputs: bool
        _clock: Callable[[], float]
        _scheduler: Any
        _lock: Any
        _runs: dict[str, LiveRun]
        _inbox: Any

    def resume(self, record: SubmissionRecord, plan: ExecutionPlan, status: SubmissionStatus,
               code: dict[str, Any] | None = None) -> list[str]:
        """Carry on a submission an earlier registry left running. Nodes that SUCCEEDED are not run
        again: the outputs their descendants need come back from the artifact store; every other
        unfinished node gets a new attempt. Returns the succeeded nodes that must run again because
        their outputs are not on record."""
        consumed = plan.consumed_outs()
        machine, recovered, rerun, sources = restored_machine(record, plan, status, self._artifacts, self._clock,
                                                     gated=self._scheduler is not None)
        self._store.append_events(recovered)
        run = LiveRun(record, plan, machine, record.runtime_env or None, dict(code or {}),
                   plan.persisted_outs(self._persist_outputs))  # as `start`: a cache node keeps every out
        for node_id, token in machine.restored_tokens().items():
            if consumed[node_id]:
                refs = self._backend.load(self._artifacts, sources[node_id], node_id, consumed[node_id])
                run.handles[(node_id, token)] = AttemptHandle(None, refs, len(machine.nodes[node_id].attempts))
        with self._lock:
            self._runs[record.submission_id] = run
        self._inbox.put(Start(record.submission_id))
        return rerun

    def start_rerun(self, record: SubmissionRecord, plan: ExecutionPlan, reuse: Mapping[str, str],
                    runtime_env: dict[str, Any] | None, code: dict[str, Any] | None = None) -> None:
        """Start a new submission that takes the outputs of the nodes in `reuse` (node -> the submission that
        made them) from the artifact store, shown CACHED, and runs the rest."""
        run, events = reused_run(record, plan, reuse, runtime_env, code, self._backend, self._artifacts,
                                 self._persist_outputs, self._clock, gated=self._scheduler is not None)
        self._store.add_submission(record)  # first: if the store cannot take it, nothing has started
        self._store.append_events(events)
        with self._lock:
            self._runs[record.submission_id] = run
        self._inbox.put(Start(record.submission_id))


__all__ = ["Reruns", "REUSED", "restored_machine", "reusable", "reused_run"]
