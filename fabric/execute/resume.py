"""Carrying on a submission an earlier registry left running: which nodes count as done, which run again."""

from __future__ import annotations

from collections.abc import Callable

from fabric.execute.outputs import has_outputs
from fabric.plan import ExecutionPlan
from fabric.record import Event, SubmissionRecord, SubmissionStatus
from fabric.schedule import RunMachine
from fabric.states import NodeState

INTERRUPTED = "interrupted: the registry restarted; it runs again, not charged to its retries"


def restored_machine(record: SubmissionRecord, plan: ExecutionPlan, status: SubmissionStatus, artifacts: str,
                     clock: Callable[[], float], *, gated: bool) -> tuple[RunMachine, list[Event], list[str]]:
    """The run's state machine as the record left it; the events of successes recovered from stored
    outputs; and the succeeded nodes that must run again because their outputs are not on record."""
    sid = record.submission_id
    consumed = plan.consumed_outs()
    states = {n.node_id: n.state for n in status.nodes}
    stored = {n for n in states if consumed[n] and has_outputs(artifacts, sid, n)}
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
    return machine, events, rerun


__all__ = ["restored_machine"]
