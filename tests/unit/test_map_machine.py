"""The pure RunMachine's map nodes: expansion into `node[i]`, max_parallel, per-child retries and timeouts, the
ratio rule, the gather, and a restore that does not run SUCCEEDED children again (fake clock, no Ray)."""

from __future__ import annotations

from typing import Any

import pytest

from fabric.plan import compile_plan
from fabric.schedule.actions import Dispatch, Gather, Kill
from fabric.schedule.run import RunMachine
from fabric.spec import load_spec
from fabric.states import NodeState, SubmissionState
from fabric.types import AttemptReport, ErrorInfo

pytestmark = pytest.mark.timeout(30)

N, S = NodeState, SubmissionState
OK, BOOM = AttemptReport(), ErrorInfo("ValueError", "boom")


def _spec(fan: dict[str, Any], slo: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    mapped = {"id": "m", "kind": "python_task", "entrypoint": "m:f", "ins": ["x=xs", "k"], "outs": ["y"],
              "map": {"over": "x", **fan}, **({"slo": slo} if slo else {}), **fields}
    return {"version": 1, "pipeline_id": "p", "nodes": [
        {"id": "a", "kind": "python_task", "entrypoint": "m:a", "outs": ["xs", "k"]}, mapped,
        {"id": "r", "kind": "python_task", "entrypoint": "m:r", "ins": ["ys=y"]}]}


class Run:
    def __init__(self, fan: dict[str, Any], slo: dict[str, Any] | None = None, **fields: Any) -> None:
        self.now = 0.0
        self.plan = compile_plan(load_spec(_spec(fan, slo, **fields)))
        self.m = RunMachine(self.plan, lambda: self.now, submission_id="s")
        self.tokens: dict[str, int] = {}
        self.gathers: list[Gather] = []
        self.dispatched: list[str] = []

    def feed(self, actions: list[Any]) -> list[Any]:
        for action in actions:
            if isinstance(action, Dispatch):
                self.tokens[action.node_id] = action.token
                self.dispatched.append(action.node_id)
            elif isinstance(action, Gather):
                self.gathers.append(action)
        return actions

    def ok(self, node: str) -> list[Any]:
        return self.feed(self.m.on_result(node, self.tokens[node], OK))

    def fail(self, node: str) -> list[Any]:
        return self.feed(self.m.on_result(node, self.tokens[node], OK, BOOM))

    def expand(self, items: int) -> list[Any]:
        self.feed(self.m.start())
        self.ok("a")
        assert self.dispatched == ["a", "m"]  # the map node's own dispatch is its split; r waits for the gather
        return self.feed(self.m.expand("m", self.tokens["m"], [f"h{i}" for i in range(items)]))

    def state(self, node: str) -> NodeState:
        return self.m.nodes[node].state


def test_children_run_under_max_parallel_and_the_map_gathers_in_item_order():
    run = Run({"max_parallel": 2})
    run.expand(5)
    assert run.dispatched[2:] == ["m[0]", "m[1]"] and run.state("m") is N.RUNNING
    assert run.m.nodes["m[3]"].state is N.PENDING  # not released yet
    run.ok("m[1]")
    assert run.dispatched[-1] == "m[2]"
    for child in ("m[0]", "m[2]", "m[3]", "m[4]"):
        run.ok(child)
    assert run.state("m") is N.SUCCEEDED and run.dispatched[-1] == "r"
    (gather,) = run.gathers
    assert [c for c, _ in gather.children] == [f"m[{i}]" for i in range(5)] and gather.missing == ()
    run.ok("r")
    assert run.m.state is S.SUCCEEDED
    child = run.plan.nodes["m[3]"]  # a plan of its own: reads its item from the map, its other inputs as the map
    assert [(w.name, w.producer, w.out) for w in child.inputs] == [("x", "m", "item3"), ("k", "a", "k")]
    assert child.content_hash != run.plan.nodes["m[2]"].content_hash and "m[3]" not in run.plan.order


def test_a_child_retries_on_its_own_and_a_permanent_failure_fails_the_map():
    run = Run({}, slo={"retry": {"max_attempts": 2, "backoff_sec": 1}, "max_runtime": "10s"})
    run.expand(3)
    assert run.plan.nodes["m"].retry.max_attempts == 1 and run.plan.nodes["m[0]"].retry.max_attempts == 2
    run.fail("m[1]")
    assert run.state("m[1]") is N.RETRYING
    run.now = 1.0
    run.feed(run.m.tick())
    assert run.dispatched[-1] == "m[1]" and len(run.m.nodes["m[1]"].attempts) == 2
    run.now = 12.0  # m[0] and m[2] pass their own max_runtime; m[1]'s second attempt started at 1.0
    kills = [a for a in run.feed(run.m.tick()) if isinstance(a, Kill)]
    assert {k.node_id for k in kills} == {"m[0]", "m[1]", "m[2]"}
    assert run.state("m[0]") is N.RETRYING and run.state("m[1]") is N.TIMED_OUT
    run.now = 13.0
    run.feed(run.m.tick())
    for child in ("m[0]", "m[2]"):
        run.ok(child)
    assert run.state("m") is N.FAILED and run.state("r") is N.SKIPPED and run.m.state is S.FAILED
    assert "1 of 3 items failed (items 1)" in (run.m.nodes["m"].error or BOOM).message


def test_min_success_ratio_passes_the_successes_and_the_missing_indices():
    run = Run({"min_success_ratio": 0.5, "batch_size": 2})
    run.expand(5)  # batches [0, 1], [2, 3], [4]
    assert run.dispatched[2:] == ["m[0]", "m[1]", "m[2]"] and run.plan.nodes["m[0]"].batch_over == "x"
    run.fail("m[1]")
    run.ok("m[0]")
    run.ok("m[2]")
    assert run.state("m") is N.SUCCEEDED and run.state("m[1]") is N.FAILED
    (gather,) = run.gathers
    assert [c for c, _ in gather.children] == ["m[0]", "m[2]"] and gather.missing == (2, 3) and gather.batched
    assert "failed items: 2, 3" in run.m.nodes["m"].message
    run.ok("r")
    assert run.m.state is S.SUCCEEDED  # a failed child within the ratio does not fail the run


def test_an_empty_list_gathers_nothing_and_a_stale_expansion_is_ignored():
    run = Run({})
    run.expand(0)
    assert run.state("m") is N.SUCCEEDED and run.gathers[0].children == ()
    assert run.m.expand("m", run.tokens["m"], ["h"]) == []


def test_cancel_stops_the_running_children():
    run = Run({"max_parallel": 2})
    run.expand(4)
    kills = run.m.cancel()
    assert {k.node_id for k in kills if isinstance(k, Kill)} == {"m", "m[0]", "m[1]"}
    assert run.state("m[3]") is N.CANCELLED and run.m.state is S.CANCELLED


def test_restore_keeps_succeeded_children():
    run = Run({})
    plan = compile_plan(load_spec(_spec({})))
    states = {"a": N.SUCCEEDED, "m": N.RUNNING, "m[0]": N.SUCCEEDED, "m[1]": N.FAILED, "m[2]": N.RUNNING}
    history = {"m[0]": [(1.0, 2.0, "SUCCEEDED")], "m[1]": [(1.0, 2.0, "FAILED")], "m[2]": [(1.0, None, None)]}
    m = RunMachine.restore(plan, lambda: run.now, submission_id="s", created_at=0.0, states=states,
                           history=history)
    actions = m.start()
    (split,) = [a for a in actions if isinstance(a, Dispatch)]
    assert split.node_id == "m"
    actions = m.expand("m", split.token, ["h0", "h1", "h2"])
    assert [a.node_id for a in actions if isinstance(a, Dispatch)] == ["m[2]"]  # only the unfinished one
    assert m.restored_children("m") == {"m[0]": m.nodes["m[0]"].token}
    assert m.nodes["m[2]"].uncounted == 1 and m.nodes["m[1]"].state is N.FAILED


def test_the_record_replays_a_maps_children_and_lineage_has_a_job_per_child():
    from fabric.record import Event, SubmissionRecord
    from fabric.record.lineage import LineageBuilder, NodeIO
    from fabric.record.replay import status_from_events

    record = SubmissionRecord("s1", "p", _spec({}), {}, "h", "r", created_at=1.0)
    events = [Event("s1", "m", "PENDING", "QUEUED", 2.0), Event("s1", "m", "QUEUED", "RUNNING", 2.0),
              Event("s1", "m[1]", "PENDING", "QUEUED", 3.0), Event("s1", "m[1]", "QUEUED", "RUNNING", 3.0),
              Event("s1", "m[1]", "RUNNING", "SUCCEEDED", 4.0), Event("s1", "x[0]", "PENDING", "QUEUED", 4.0)]
    status = status_from_events(record, events)
    child = status.node("m[1]")
    assert child.state is N.SUCCEEDED and child.attempts == 1 and child.kind == "python_task"
    assert "x[0]" not in {n.node_id for n in status.nodes}  # not a map of this spec
    builder = LineageBuilder(record, {"m": NodeIO("m", "python_task", (("x", "a", "xs"),), ("y",), "hash")})
    emitted = [e for event in events for e in builder.feed(event)]
    assert [e["job"]["name"] for e in emitted if e["eventType"] == "COMPLETE"][-1].endswith("m[1]")
