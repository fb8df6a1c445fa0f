"""`when:` on a map node: decided in its count task before it expands (no Ray here: the task body in-process, and
the pure RunMachine fed the count's report). False: SKIPPED with the reason, no children, descendants follow
`on_skipped`; true: it expands as any map; a condition that cannot be evaluated fails it as it fails any node."""

from __future__ import annotations

from typing import Any

import pytest

from fabric.execute.conditions import Condition, Skipped
from fabric.execute.mapping import COUNT_KEY, count_items
from fabric.execute.untrusted import decode_report
from fabric.execute.worker import NodeFailure
from fabric.plan import compile_plan
from fabric.schedule.actions import Dispatch
from fabric.schedule.run import RunMachine
from fabric.spec import load_spec
from fabric.spec.conditions import WHEN_INPUT
from fabric.states import NodeState, SubmissionState
from fabric.types import AttemptReport

pytestmark = pytest.mark.timeout(30)

N, S = NodeState, SubmissionState
WHEN = "k > 0"


def _spec(on_skipped: str = "skip") -> dict[str, Any]:
    return {"version": 1, "pipeline_id": "p", "nodes": [
        {"id": "a", "kind": "python_task", "entrypoint": "m:a", "outs": ["xs", "k"]},
        {"id": "m", "kind": "python_task", "entrypoint": "m:f", "ins": ["x=xs"], "outs": ["y"], "when": WHEN,
         "map": {"over": "x"}},
        {"id": "r", "kind": "python_task", "entrypoint": "m:r", "ins": ["ys=y"], "on_skipped": on_skipped}]}


class Run:
    def __init__(self, on_skipped: str = "skip") -> None:
        self.plan = compile_plan(load_spec(_spec(on_skipped)))
        self.m = RunMachine(self.plan, lambda: 0.0, submission_id="s")
        self.tokens: dict[str, int] = {}
        self.dispatched: list[str] = []

    def feed(self, actions: list[Any]) -> None:
        for action in actions:
            if isinstance(action, Dispatch):
                self.tokens[action.node_id] = action.token
                self.dispatched.append(action.node_id)

    def started(self) -> None:
        """`a` succeeded: the map's count task is dispatched."""
        self.feed(self.m.start())
        self.feed(self.m.on_result("a", self.tokens["a"], AttemptReport()))
        assert self.dispatched == ["a", "m"]

    def counted(self, report: AttemptReport) -> None:
        """The count task reported the map skipped: the engine hands it on as any node's result."""
        self.started()
        self.feed(self.m.on_result("m", self.tokens["m"], report))


def test_the_map_node_reads_its_condition_and_its_children_do_not():
    plan = compile_plan(load_spec(_spec()))
    m = plan.nodes["m"]
    assert m.when == WHEN and [(w.name, w.producer, w.out) for w in m.inputs] == [
        ("x", "a", "xs"), (WHEN_INPUT + "k", "a", "k")]
    run = Run()
    run.started()  # the count was not skipped: the engine expands the map (execute/engine.py)
    run.feed(run.m.expand("m", run.tokens["m"], ["h0", "h1"]))
    child = run.plan.nodes["m[0]"]
    assert child.when is None and child.when_params == {} and [w.name for w in child.inputs] == ["x"]
    assert run.dispatched == ["a", "m", "m[0]", "m[1]"]


def test_a_false_condition_skips_the_map_with_its_reason_and_its_reader_follows():
    run = Run()
    run.counted(AttemptReport(skipped=f"when is false: {WHEN}"))
    assert run.m.nodes["m"].state is N.SKIPPED and run.m.nodes["m"].reason == f"when is false: {WHEN}"
    assert "m[0]" not in run.m.nodes and run.m.node_order() == ["a", "m", "r"]  # no children were made
    assert run.m.nodes["r"].state is N.SKIPPED and run.m.nodes["r"].reason == "upstream m skipped"
    assert run.dispatched == ["a", "m"] and run.m.state is S.SUCCEEDED  # a condition's skip is a success


def test_a_reader_with_on_skipped_run_runs_after_a_skipped_map():
    run = Run(on_skipped="run")
    run.counted(AttemptReport(skipped=f"when is false: {WHEN}"))
    assert run.m.nodes["m"].state is N.SKIPPED and run.dispatched == ["a", "m", "r"]
    run.feed(run.m.on_result("r", run.tokens["r"], AttemptReport()))
    assert run.m.nodes["r"].state is N.SUCCEEDED and run.m.state is S.SUCCEEDED


def test_the_count_task_decides_the_condition_first():
    cond = Condition(WHEN, {}, "skip")
    names = (WHEN_INPUT + "k",)
    false = decode_report(count_items("m", 1, "x", [1, 2], 0, condition=cond, when_names=names))
    assert false.skipped == f"when is false: {WHEN}" and not false.digests
    true = decode_report(count_items("m", 1, "x", [1, 2], 3, condition=cond, when_names=names))
    assert not true.skipped and (true.digests or {})[COUNT_KEY] == "2"
    # a skipped producer of a condition value reads as null: null > 0 is a ConditionError, as for any node
    with pytest.raises(NodeFailure) as caught:
        count_items("m", 1, "x", [1], Skipped("a"), condition=cond, when_names=names)
    assert caught.value.error.type == "ConditionError" and caught.value.error.message.startswith(f"when {WHEN!r}:")
    with pytest.raises(NodeFailure) as caught:
        count_items("m", 1, "x", [1], "three", condition=cond, when_names=names)
    assert caught.value.error.type == "ConditionError"


def test_a_skipped_list_skips_the_map_or_fails_it_under_on_skipped_run():
    skipped = decode_report(count_items("m", 1, "x", Skipped("a"), condition=Condition(None)))
    assert skipped.skipped == "upstream a skipped"
    with pytest.raises(NodeFailure) as caught:
        count_items("m", 1, "x", Skipped("a"), condition=Condition(None, {}, "run"))
    assert caught.value.error.type == "MapInputError" and "'a' was SKIPPED" in caught.value.error.message
    params = Condition("params.go", {"go": False}, "run")  # a params-only condition: no values wired
    assert decode_report(count_items("m", 1, "x", [1], condition=params)).skipped == "when is false: params.go"
