"""A status rebuilt from events alone matches what the run machine decided (pure)."""

from __future__ import annotations

import pytest

from fabric.plan import compile_plan
from fabric.record import Event, SubmissionRecord
from fabric.record.replay import status_from_events
from fabric.schedule import Dispatch, RunMachine
from fabric.spec import load_spec
from fabric.types import AttemptReport, ErrorInfo

pytestmark = pytest.mark.timeout(30)

SPEC = {
    "version": 1, "pipeline_id": "replay",
    "nodes": [
        {"id": "a", "kind": "python_task", "entrypoint": "m:a", "slo": {"retry": {"max_attempts": 2}}},
        {"id": "b", "kind": "python_task", "entrypoint": "m:b"},
        {"id": "c", "kind": "python_task", "entrypoint": "m:c"},
        {"id": "d", "kind": "sql", "params": {"query": "SELECT 1"}},
    ],
    "edges": [{"from": "a", "to": "b"}, {"from": "b", "to": "c"}],
}


def test_replayed_status_matches_the_machine():
    now = [1000.0]
    machine = RunMachine(compile_plan(load_spec(SPEC)), lambda: now[0], submission_id="s1")
    tokens: dict[str, int] = {}

    def apply(actions):
        tokens.update({a.node_id: a.token for a in actions if isinstance(a, Dispatch)})

    apply(machine.start())
    now[0] += 1
    apply(machine.on_result("a", tokens["a"], AttemptReport(), ErrorInfo("ValueError", "first try")))
    apply(machine.on_result("d", tokens["d"], AttemptReport()))
    now[0] += 1
    apply(machine.tick())
    apply(machine.on_result("a", tokens["a"], AttemptReport()))
    now[0] += 1
    apply(machine.on_result("b", tokens["b"], AttemptReport(), ErrorInfo("KeyError", "no column 'px'")))
    assert machine.done

    events = [Event("s1", t.node_id, t.source, t.target, t.at, t.attempt, t.reason)
              for t in machine.drain_transitions()]
    record = SubmissionRecord("s1", "replay", SPEC, {}, "h", "r", created_at=999.0)
    status = status_from_events(record, events)

    assert status.state == machine.state == "FAILED"
    for node_id, run in machine.nodes.items():
        node = status.node(node_id)
        assert node.state == run.state, node_id
        assert node.attempts == len(run.attempts), node_id
        assert [a.started_at for a in node.history] == [a.started_at for a in run.attempts], node_id
    assert status.node("a").history[0].outcome == "RETRYING"
    assert status.node("b").error.message == "no column 'px'"
    assert status.node("c").reason.startswith("upstream b")
    assert status.counts == {"SUCCEEDED": 2, "FAILED": 1, "SKIPPED": 1}


def test_a_preempted_attempt_replays_as_ended():
    now = [1000.0]
    machine = RunMachine(compile_plan(load_spec(SPEC)), lambda: now[0], submission_id="s1", gated=True)
    machine.start()
    machine.admit("d")
    now[0] += 5
    machine.preempt("d", "preempted for s2/x (critical)")
    now[0] += 1
    machine.admit("d")
    events = [Event("s1", t.node_id, t.source, t.target, t.at, t.attempt, t.reason)
              for t in machine.drain_transitions()]
    node = status_from_events(SubmissionRecord("s1", "replay", SPEC, {}, "h", "r", created_at=999.0), events).node("d")
    assert [(a.started_at, a.ended_at, a.outcome) for a in node.history] == [(1000.0, 1005.0, "QUEUED"),
                                                                           (1006.0, None, None)]


def test_the_typed_vocabulary_keeps_the_strings_old_databases_hold():
    """Stored values are the enums' values: renaming one would orphan every recorded row of it."""
    from fabric.spec import Priority
    from fabric.states import TERMINAL_NODE_STATES, TERMINAL_SUBMISSION_STATES, EventKind, SubmissionState

    assert {k.name: k.value for k in EventKind} == {"COST": "cost", "QUOTA_USE": "usage", "KILL_SWITCH_ON": "on",
                                                    "KILL_SWITCH_OFF": "off", "EXPIRED": "EXPIRED",
                                                    "NOTIFY_DELIVERED": "delivered", "NOTIFY_RETRY": "retry",
                                                    "NOTIFY_GAVE_UP": "gave-up"}
    assert [p.value for p in Priority] == ["low", "normal", "high", "critical"]
    assert {str(s) for s in TERMINAL_NODE_STATES} == {"SUCCEEDED", "CACHED", "FAILED", "TIMED_OUT", "SKIPPED",
                                                       "CANCELLED"}
    assert set(SubmissionState) - {SubmissionState.RUNNING} == TERMINAL_SUBMISSION_STATES
