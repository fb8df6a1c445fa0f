"""Exit hooks (`on_exit`): the spec's rules, the machine holding them until the run's end, and what they are told."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import pytest

from fabric.errors import SpecError
from fabric.execute.engine import Engine
from fabric.execute.ports import AttemptHandle, Outcome
from fabric.execute.resume import reusable
from fabric.plan import ExecutionPlan, compile_plan
from fabric.record import MemoryStore, SubmissionRecord
from fabric.record.cache import MemoryCacheIndex
from fabric.record.metrics import FabricMetrics
from fabric.schedule.run import Dispatch, RunMachine
from fabric.spec import load_spec
from fabric.states import NodeState, SubmissionState
from fabric.types import AttemptReport, ErrorInfo
from tests.unit.test_engine_seams import Clock, FakeBackend, wait_for
from tests.unit.test_run_machine import Run

pytestmark = pytest.mark.timeout(60)

N, S = NodeState, SubmissionState


def _doc(hooks: dict[str, str], **extra: Any) -> dict[str, Any]:
    """a -> b (b reads a's x), and one exit hook per entry (id -> on_exit)."""
    nodes = [{"id": "a", "kind": "python_task", "entrypoint": "m:a", "outs": ["x"]},
             {"id": "b", "kind": "python_task", "entrypoint": "m:b", "ins": ["x"]},
             *({"id": h, "kind": "python_task", "entrypoint": "m:h", "on_exit": when} for h, when in hooks.items())]
    return {"version": 1, "pipeline_id": "p", "nodes": nodes, **extra}


def _plan(hooks: dict[str, str]) -> ExecutionPlan:
    return compile_plan(load_spec(_doc(hooks)))


def _problems(doc: dict[str, Any]) -> list[str]:
    with pytest.raises(SpecError) as err:
        load_spec(doc)
    return [f"{p.where}: {p.message}" for p in err.value.problems]


def test_an_exit_hook_reads_no_outputs_has_no_edges_and_is_not_cached() -> None:
    doc = _doc({"h": "always"})
    doc["nodes"][2]["ins"] = ["x"]
    assert _problems(doc) == ["nodes[2].ins: exit hook 'h' cannot read other nodes' outputs: they may not exist"]
    doc = _doc({"h": "always"}, edges=[{"from": "a", "to": "b"}, {"from": "b", "to": "h"}])
    assert _problems(doc) == ["edges[1]: exit hook 'h' cannot be in an edge (b -> h)"]
    doc = _doc({"h": "always"})
    doc["nodes"][2].update(outs=["y"])
    doc["nodes"][1]["ins"] = ["x", "y"]
    assert _problems(doc) == ["nodes[b].ins[1]: exit hook 'h' cannot be in an edge (h -> b)"]
    doc = _doc({"h": "success"})
    doc["nodes"][2]["cache"] = True
    assert _problems(doc) == ["nodes[2].cache: exit hook 'h' is not cached"]
    only = {"version": 1, "pipeline_id": "p", "nodes": [{"id": "h", "kind": "python_task", "entrypoint": "m:h",
                                                          "on_exit": "always"}]}
    assert _problems(only) == ["nodes: every node is an exit hook"]
    bad = _doc({"h": "sometimes"})
    assert [p.split(":")[0] for p in _problems(bad)] == ["nodes[2].on_exit"]


def test_hooks_wait_for_the_end_then_success_and_always_run_after_a_success() -> None:
    r = Run(_plan({"on_ok": "success", "on_fail": "failure", "finally": "always"}))
    dispatched = {a.node_id for a in r.start() if isinstance(a, Dispatch)}
    assert dispatched == {"a", "b"}  # no hook goes to Ray early: it waits for the run's end
    r.ok("a")
    assert {h: r.states()[h] for h in ("on_ok", "on_fail", "finally")} == dict.fromkeys(
        ("on_ok", "on_fail", "finally"), N.PENDING)
    actions = r.ok("b")
    assert {a.node_id for a in actions if isinstance(a, Dispatch)} == {"on_ok", "finally"}
    assert r.states()["on_fail"] is N.SKIPPED and r.m.nodes["on_fail"].reason == "on_exit failure: the run succeeded"
    assert r.m.state is S.RUNNING  # the run ends with its hooks
    r.ok("on_ok")
    r.ok("finally")
    assert r.m.state is S.SUCCEEDED
    r.assert_legal()


def test_after_a_failure_failure_and_always_hooks_run_and_the_run_stays_failed() -> None:
    r = Run(_plan({"on_ok": "success", "on_fail": "failure", "finally": "always"}))
    r.start()
    actions = r.fail("a")  # b is SKIPPED below it: every other node has ended
    assert {a.node_id for a in actions if isinstance(a, Dispatch)} == {"on_fail", "finally"}
    assert r.states()["on_ok"] is N.SKIPPED and r.states()["b"] is N.SKIPPED
    r.ok("on_fail")
    r.ok("finally")
    assert r.m.state is S.FAILED  # a hook that succeeds does not turn the run's failure into a success
    r.assert_legal()


def test_a_failed_hook_fails_a_run_that_succeeded() -> None:
    r = Run(_plan({"finally": "always"}))
    r.start()
    r.ok("a")
    r.ok("b")
    r.fail("finally")
    assert r.m.state is S.FAILED and r.states()["b"] is N.SUCCEEDED


def test_a_cancelled_run_cancels_its_hooks() -> None:
    r = Run(_plan({"finally": "always"}))
    r.start()
    r._feed(r.m.cancel())
    assert r.states()["finally"] is N.CANCELLED and r.m.state is S.CANCELLED


def test_a_restored_run_whose_nodes_had_ended_runs_its_pending_hook() -> None:
    plan = _plan({"on_fail": "failure", "finally": "always"})
    states = {"a": N.FAILED, "b": N.SKIPPED, "finally": N.SUCCEEDED}
    m = RunMachine.restore(plan, lambda: 5.0, submission_id="s", created_at=0.0, states=states, history={})
    actions = m.start()
    assert [a.node_id for a in actions if isinstance(a, Dispatch)] == ["on_fail"]  # `finally` ran before
    m.on_result("on_fail", m.nodes["on_fail"].token or 0, AttemptReport())
    assert m.state is S.FAILED


def test_a_rerun_never_reuses_an_exit_hook(tmp_path) -> None:
    plan = _plan({"finally": "always"})
    states = {"a": N.SUCCEEDED, "b": N.FAILED, "finally": N.SUCCEEDED}
    (tmp_path / "s" / "a").mkdir(parents=True)
    assert "finally" not in reusable(plan, states, {}, "s", str(tmp_path / "none"))


class CallBackend(FakeBackend):
    """Also keeps each NodeCall, to see what a hook is told."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: dict[str, Any] = {}

    def submit(self, call: Any, unit: Any, inputs: Sequence[Any], runtime_env: dict[str, Any] | None,
               placement: Any, on_done: Callable[[Outcome], None]) -> AttemptHandle:
        self.calls[call.node_id] = call
        return super().submit(call, unit, inputs, runtime_env, placement, on_done)

    def fail(self, node_id: str) -> None:
        with self.lock:
            on_done = next(done for node, _, _, done in reversed(self.submitted) if node == node_id)
        on_done((AttemptReport(started_at=1.0, ended_at=2.0), ErrorInfo("ValueError", "bad fit")))


def test_the_engine_tells_a_hook_the_runs_outcome(tmp_path) -> None:
    backend = CallBackend()
    engine = Engine(MemoryStore(), backend=backend, home=str(tmp_path), artifacts=str(tmp_path / "artifacts"),
                    clock=Clock(), persist_outputs=False, cache_index=MemoryCacheIndex(), metrics=FabricMetrics())
    try:
        doc = _doc({"alert": "failure", "done": "success"})
        plan = compile_plan(load_spec(doc))
        engine.start(SubmissionRecord("s1", "p", doc, {}, plan.plan_hash, "r", 0.0), plan, None)
        wait_for(lambda: {"a", "b"} <= set(backend.calls), "a and b dispatched")
        assert backend.calls["a"].run_outcome is None
        backend.finish("a")
        wait_for(lambda: engine.status("s1").node("b").state is N.RUNNING, "b running")
        backend.fail("b")
        wait_for(lambda: "alert" in backend.calls, "the failure hook dispatched")
        assert backend.calls["alert"].run_outcome == {
            "submission_id": "s1", "pipeline_id": "p", "state": "FAILED",
            "nodes": {"a": "SUCCEEDED", "b": "FAILED"}, "failed": ["b"]}
        backend.finish("alert")
        assert engine.wait("s1", 10)
        status = engine.status("s1")
        assert status.state is S.FAILED and status.node("done").state is N.SKIPPED
        assert "done" not in backend.calls
    finally:
        engine.shutdown()
