"""Unit tests of the pure RunMachine: eager dispatch, buffering, retries, timeouts and cancellation."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import pytest

from fabric.errors import IllegalTransition
from fabric.plan import ExecutionPlan, compile_plan
from fabric.schedule.run import Dispatch, Kill, RunMachine, Transition
from fabric.spec import load_spec
from fabric.states import (
    NODE_TRANSITIONS,
    SUBMISSION_TRANSITIONS,
    KillCause,
    NodeState,
    SubmissionState,
    check_node_transition,
)
from fabric.types import AttemptReport, ErrorInfo

pytestmark = pytest.mark.timeout(30)

N, S = NodeState, SubmissionState


def _plan(nodes: list[str | tuple[str, dict[str, Any]]], edges: Sequence[tuple[str, str]] = (),
          dag_slo: dict[str, Any] | None = None, fuse: bool = True) -> ExecutionPlan:
    """Nodes are ids or (id, node slo); the machine never runs the entrypoint. Each edge carries data (every
    node makes an out named after itself), so a node may go to Ray before its upstream ends."""
    specs = []
    for entry in nodes:
        node_id, slo = (entry, None) if isinstance(entry, str) else entry
        ins = [a for a, b in edges if b == node_id]
        specs.append({"id": node_id, "kind": "python_task", "entrypoint": "m:f", "outs": [node_id],
                      **({"ins": ins} if ins else {}), **({"slo": slo} if slo else {})})
    doc: dict[str, Any] = {"version": 1, "pipeline_id": "p", "nodes": specs,
                           "edges": [{"from": a, "to": b} for a, b in edges]}
    if dag_slo:
        doc["slo"] = dag_slo
    return compile_plan(load_spec(doc), fuse=fuse)


class Run:
    """Drives a RunMachine the way the engine does, on a fake clock, remembering each node's token."""

    def __init__(self, plan: ExecutionPlan) -> None:
        self.now = 0.0
        self.m = RunMachine(plan, lambda: self.now, submission_id="s")
        self.tokens: dict[str, int] = {}
        self.dispatches: list[Dispatch] = []
        self.transitions: list[Transition] = []

    def _feed(self, actions: list[Any]) -> list[Any]:
        for action in actions:
            if isinstance(action, Dispatch):
                self.tokens[action.node_id] = action.token
                self.dispatches.append(action)
        return actions

    def start(self) -> list[Any]:
        return self._feed(self.m.start())

    def ok(self, node: str, token: int | None = None) -> list[Any]:
        return self._feed(self.m.on_result(node, token or self.tokens[node], AttemptReport()))

    def fail(self, node: str, token: int | None = None) -> list[Any]:
        error = ErrorInfo("ValueError", "boom")
        return self._feed(self.m.on_result(node, token or self.tokens[node], AttemptReport(), error=error))

    def tick(self, advance: float = 0.0) -> list[Any]:
        self.now += advance
        return self._feed(self.m.tick())

    def states(self) -> dict[str, NodeState]:
        return {n: run.state for n, run in self.m.nodes.items()}

    def drain(self) -> list[Transition]:
        out = self.m.drain_transitions()
        self.transitions.extend(out)
        return out

    def assert_legal(self) -> None:
        """Every transition is in the table and chains from the node's previous state."""
        self.drain()
        current: dict[str | None, str] = {n: N.PENDING for n in self.m.nodes} | {None: S.RUNNING}
        for t in self.transitions:
            table = SUBMISSION_TRANSITIONS[S(t.source)] if t.node_id is None else NODE_TRANSITIONS[N(t.source)]
            assert t.target in table, t
            assert current[t.node_id] == t.source, t
            current[t.node_id] = t.target
        assert {n: current[n] for n in self.m.nodes} == self.states()
        assert current[None] == self.m.state

    def targets(self, node: str) -> list[str]:
        self.drain()
        return [t.target for t in self.transitions if t.node_id == node]


def _by_node(actions: list[Any]) -> dict[str, Any]:
    return {a.node_id: a for a in actions}


def test_linear_chain_dispatches_eagerly_and_succeeds() -> None:
    r = Run(_plan(["a", "b", "c"], [("a", "b"), ("b", "c")]))
    actions = r.start()
    assert all(isinstance(a, Dispatch) and a.attempt == 1 for a in actions)
    d = _by_node(actions)
    assert sorted(d) == ["a", "b", "c"] and len(actions) == 3
    assert len({a.token for a in actions}) == 3
    assert d["a"].input_tokens == ()
    assert d["b"].input_tokens == (("a", d["a"].token),)
    assert d["c"].input_tokens == (("b", d["b"].token),)
    assert r.states() == {"a": N.RUNNING, "b": N.PENDING, "c": N.PENDING}
    assert r.ok("a") == []
    assert r.states() == {"a": N.SUCCEEDED, "b": N.RUNNING, "c": N.PENDING}
    assert r.m.state is S.RUNNING
    r.ok("b"), r.ok("c")
    assert set(r.states().values()) == {N.SUCCEEDED}
    assert r.m.state is S.SUCCEEDED and r.m.done
    assert len(r.dispatches) == 3
    assert all([a.outcome for a in run.attempts] == [N.SUCCEEDED] for run in r.m.nodes.values())
    r.assert_legal()
    assert r.transitions[-1].node_id is None and r.transitions[-1].target == S.SUCCEEDED
    assert r.targets("b") == [N.QUEUED, N.RUNNING, N.SUCCEEDED]


def test_a_gang_node_waits_for_its_upstream_before_it_goes_to_ray() -> None:
    """Its placement group would hold its GPUs while the upstream runs, perhaps the ones the upstream needs."""
    doc = {"version": 1, "pipeline_id": "p", "edges": [{"from": "a", "to": "gang"}], "nodes": [
        {"id": "a", "kind": "python_task", "entrypoint": "m:f", "resources": {"gpu": 4}},
        {"id": "gang", "kind": "python_task", "entrypoint": "m:f", "resources": {"gpu": 2, "workers": 2}}]}
    r = Run(compile_plan(load_spec(doc)))
    assert sorted(_by_node(r.start())) == ["a"]
    assert r.states() == {"a": N.RUNNING, "gang": N.PENDING}
    r.ok("a")
    assert r.states() == {"a": N.SUCCEEDED, "gang": N.RUNNING}
    assert sorted(_by_node(r.dispatches)) == ["a", "gang"]


def test_with_admission_a_cache_node_is_held_until_its_cache_check_lets_it_go() -> None:
    plan = compile_plan(load_spec({"version": 1, "pipeline_id": "p", "nodes": [
        {"id": "c", "kind": "python_task", "entrypoint": "m:f", "cache": True}]}))
    m = RunMachine(plan, time.time, submission_id="s", gated=True)
    assert m.start() == []
    assert m.ready_cached() == ["c"] and m.waiting() == []  # admission must not run it before the check
    m.held.discard("c")  # the cache decided it runs (a miss, and no identical node running)
    assert m.waiting() == ["c"]
    assert [a.node_id for a in m.admit("c")] == ["c"] and m.held == set()
    assert m.ready_cached() == []  # admitted: no longer waiting for a cache check


def test_early_result_is_buffered_until_upstream_succeeds() -> None:
    r = Run(_plan(["a", "b", "c"], [("a", "b"), ("b", "c")]))
    r.start()
    assert r.ok("b") == []
    assert r.m.nodes["b"].state is N.PENDING and r.m.nodes["b"].attempts == []
    assert r.targets("b") == []
    assert r.ok("a") == []  # no new dispatch: b's buffered result is applied
    assert r.states() == {"a": N.SUCCEEDED, "b": N.SUCCEEDED, "c": N.RUNNING}
    r.ok("c")
    assert r.m.state is S.SUCCEEDED and len(r.dispatches) == 3
    r.assert_legal()


def test_an_edge_without_data_holds_its_target_until_the_source_succeeded() -> None:
    """Only data makes a Ray task wait: a node whose edge carries none is dispatched once that upstream ended
    (a `finetune` then an `llm_generate` of the model it registered: an order, not a value)."""
    plan = compile_plan(load_spec({"version": 1, "pipeline_id": "p", "nodes": [
        {"id": "a", "kind": "python_task", "entrypoint": "m:f", "outs": ["x"]},
        {"id": "b", "kind": "python_task", "entrypoint": "m:f"},
        {"id": "c", "kind": "python_task", "entrypoint": "m:f", "ins": ["x"]}],
        "edges": [{"from": "a", "to": "b"}, {"from": "a", "to": "c"}]}), fuse=False)
    r = Run(plan)
    assert {a.node_id for a in r.start() if isinstance(a, Dispatch)} == {"a", "c"}  # c waits on x in Ray
    assert {a.node_id for a in r.ok("a") if isinstance(a, Dispatch)} == {"b"}


def test_early_failure_is_buffered_then_applied() -> None:
    r = Run(_plan(["a", "b", "c"], [("a", "b"), ("b", "c")]))
    r.start()
    assert r.fail("b") == []
    assert r.m.nodes["b"].state is N.PENDING
    r.ok("a")
    assert r.states() == {"a": N.SUCCEEDED, "b": N.FAILED, "c": N.SKIPPED}
    assert r.m.state is S.FAILED
    r.assert_legal()


def test_retry_waits_out_exponential_backoff() -> None:
    r = Run(_plan([("a", {"retry": {"max_attempts": 3, "backoff_sec": 2}}), "b"], [("a", "b")]))
    r.start()
    r.now = 1.0
    assert r.fail("a") == []
    a = r.m.nodes["a"]
    assert a.state is N.RETRYING and a.token is None and r.m.nodes["b"].token is None
    assert a.error is not None and a.error.type == "ValueError"
    assert r.m.next_deadline() == 3.0
    assert r.tick(1.9) == []
    assert a.state is N.RETRYING
    d = _by_node(r.tick(0.1))  # t = 3.0: backoff of 2 s elapsed
    assert sorted(d) == ["a", "b"] and d["a"].attempt == 2 and d["b"].attempt == 1
    assert d["b"].input_tokens == (("a", d["a"].token),)
    assert a.state is N.RUNNING
    r.now = 4.0
    r.fail("a")
    assert r.m.next_deadline() == 8.0  # second backoff: 2 s * factor 2
    assert r.tick(3.9) == []
    d = _by_node(r.tick(0.1))
    assert d["a"].attempt == 3 and a.state is N.RUNNING
    r.now = 9.0
    r.ok("a"), r.ok("b")
    assert a.state is N.SUCCEEDED and r.m.state is S.SUCCEEDED
    assert [t.number for t in a.attempts] == [1, 2, 3]
    assert [t.outcome for t in a.attempts] == [N.RETRYING, N.RETRYING, N.SUCCEEDED]
    assert [t.started_at for t in a.attempts] == [0.0, 3.0, 8.0]
    assert a.attempts[1].started_at - a.attempts[0].ended_at == pytest.approx(2.0)
    assert a.attempts[2].started_at - a.attempts[1].ended_at == pytest.approx(4.0)
    assert r.targets("a") == [N.QUEUED, N.RUNNING, N.RETRYING] * 2 + [N.QUEUED, N.RUNNING, N.SUCCEEDED]
    r.assert_legal()


def test_failure_withdraws_eager_descendants() -> None:
    r = Run(_plan([("a", {"retry": {"max_attempts": 2, "backoff_sec": 1}}), "b", "c"], [("a", "b"), ("b", "c")]))
    r.start()
    old_a, old_b, old_c = r.tokens["a"], r.tokens["b"], r.tokens["c"]
    r.fail("a")
    assert r.m.nodes["b"].token is None and r.m.nodes["c"].token is None
    r.drain()
    assert r.m.on_result("b", old_b, AttemptReport()) == []
    assert r.m.on_result("b", old_b, AttemptReport(), ErrorInfo("ValueError", "echo")) == []
    assert r.m.on_result("c", old_c, AttemptReport()) == []
    assert r.drain() == [] and r.states() == {"a": N.RETRYING, "b": N.PENDING, "c": N.PENDING}
    d = _by_node(r.tick(1.0))
    assert sorted(d) == ["a", "b", "c"]
    assert len({old_a, old_b, old_c, d["a"].token, d["b"].token, d["c"].token}) == 6
    assert d["b"].input_tokens == (("a", d["a"].token),)
    assert d["c"].input_tokens == (("b", d["b"].token),)
    assert r.m.on_result("b", old_b, AttemptReport()) == []  # still stale after the re-dispatch
    assert r.m.nodes["b"].buffered is None
    r.ok("a")
    assert r.states() == {"a": N.SUCCEEDED, "b": N.RUNNING, "c": N.PENDING}  # no stale result applied
    r.ok("b"), r.ok("c")
    assert r.m.state is S.SUCCEEDED
    assert [len(run.attempts) for run in r.m.nodes.values()] == [2, 1, 1]
    r.assert_legal()


def test_terminal_failure_skips_descendants_but_independent_branch_runs() -> None:
    r = Run(_plan(["a", "b", "c", "x"], [("a", "b"), ("b", "c")]))
    r.start()
    assert r.fail("a") == []
    assert r.states() == {"a": N.FAILED, "b": N.SKIPPED, "c": N.SKIPPED, "x": N.RUNNING}
    assert r.m.state is S.RUNNING
    assert r.m.nodes["a"].error == ErrorInfo("ValueError", "boom")
    assert r.m.nodes["a"].attempts[0].outcome is N.FAILED
    assert r.ok("b") == [] and r.m.nodes["b"].state is N.SKIPPED
    r.ok("x")
    assert r.m.nodes["x"].state is N.SUCCEEDED
    assert r.m.state is S.FAILED and r.m.done
    r.assert_legal()


@pytest.mark.parametrize(("max_attempts", "expected"), [(1, N.TIMED_OUT), (2, N.RETRYING)])
def test_node_timeout_kills_the_running_attempt(max_attempts: int, expected: NodeState) -> None:
    slo = {"max_runtime": "2s", "retry": {"max_attempts": max_attempts}}
    r = Run(_plan([("a", slo), "b"], [("a", "b")]))
    r.start()
    token = r.tokens["a"]
    assert r.m.next_deadline() == 2.0
    assert r.tick(1.9) == []
    actions = r.tick(0.6)
    assert len(actions) == 1 and isinstance(actions[0], Kill)
    assert (actions[0].node_id, actions[0].token) == ("a", token)
    assert actions[0].cause is KillCause.NODE_TIMEOUT and actions[0].cause.force  # a timeout is forced at once
    a = r.m.nodes["a"]
    assert a.state is expected and a.attempts[0].error is not None and a.attempts[0].error.type == "Timeout"
    r.drain()
    assert r.m.on_result("a", token, AttemptReport()) == []  # the killed attempt's late result
    assert a.state is expected and r.drain() == []
    if max_attempts == 1:
        assert r.m.nodes["b"].state is N.SKIPPED and r.m.state is S.FAILED
    else:
        assert r.m.nodes["b"].state is N.PENDING and r.m.nodes["b"].token is None
        d = _by_node(r.tick())
        assert d["a"].attempt == 2 and d["a"].token != token and a.deadline == pytest.approx(4.5)
    r.assert_legal()


def test_dag_max_runtime_times_out_the_submission() -> None:
    r = Run(_plan(["a", "b", "c", "x", ("r", {"retry": {"max_attempts": 2, "backoff_sec": 100}})],
                  [("a", "b"), ("b", "c")], dag_slo={"max_runtime": "10s"}))
    r.start()
    assert r.m.next_deadline() == 10.0
    r.now = 1.0
    r.ok("a")
    r.fail("r")
    assert r.tick(8.9) == []
    actions = r.tick(0.1)
    assert all(isinstance(a, Kill) for a in actions)
    # The DAG's deadline forces its live work at once too (docs/architecture.md), eager dispatches included.
    assert {a.cause for a in actions} == {KillCause.DAG_TIMEOUT} and all(a.cause.force for a in actions)
    assert sorted((a.node_id, a.token) for a in actions) == [(n, r.tokens[n]) for n in ("b", "c", "x")]
    assert r.states() == {"a": N.SUCCEEDED, "b": N.TIMED_OUT, "c": N.SKIPPED, "x": N.TIMED_OUT, "r": N.SKIPPED}
    assert r.m.state is S.TIMED_OUT and r.m.ended_at == 10.0
    assert r.m.next_deadline() is None
    assert r.tick(100) == [] and r.ok("b") == [] and r.m.cancel() == []
    r.assert_legal()


def test_cancel_kills_every_live_dispatch() -> None:
    r = Run(_plan(["a", "b", "c", "x", ("r", {"retry": {"max_attempts": 2, "backoff_sec": 5}})],
                  [("a", "b"), ("b", "c")]))
    r.start()
    r.ok("a")
    r.fail("r")
    actions = r.m.cancel("stop")
    assert all(isinstance(a, Kill) and a.reason == "stop" for a in actions)
    assert all(a.cause is KillCause.CANCELLED and not a.cause.force for a in actions)  # cooperative first
    assert sorted((a.node_id, a.token) for a in actions) == [(n, r.tokens[n]) for n in ("b", "c", "x")]
    assert r.states() == {"a": N.SUCCEEDED, "b": N.CANCELLED, "c": N.CANCELLED, "x": N.CANCELLED,
                          "r": N.CANCELLED}
    assert r.m.state is S.CANCELLED
    r.drain()
    assert r.ok("b") == [] and r.fail("x") == [] and r.tick(10) == []
    assert r.m.cancel() == [] and r.m.state is S.CANCELLED
    assert r.drain() == [] and r.m.next_deadline() is None
    r.assert_legal()


def test_diamond_rewires_the_join_after_a_retry() -> None:
    r = Run(_plan(["a", "b", ("c", {"retry": {"max_attempts": 2}}), "d"],
                  [("a", "b"), ("a", "c"), ("b", "d"), ("c", "d")]))
    d = _by_node(r.start())
    assert dict(d["d"].input_tokens) == {"b": d["b"].token, "c": d["c"].token}
    r.ok("a")
    assert r.states() == {"a": N.SUCCEEDED, "b": N.RUNNING, "c": N.RUNNING, "d": N.PENDING}
    old_b = r.tokens["b"]
    r.fail("c")
    assert r.m.nodes["d"].token is None and r.m.nodes["b"].token == old_b
    d = _by_node(r.tick())
    assert sorted(d) == ["c", "d"]
    assert dict(d["d"].input_tokens) == {"b": old_b, "c": d["c"].token}
    r.ok("b")
    assert r.m.nodes["d"].state is N.PENDING
    r.ok("c")
    assert r.m.nodes["d"].state is N.RUNNING
    r.ok("d")
    assert r.m.state is S.SUCCEEDED and len(r.dispatches) == 6
    r.assert_legal()


def test_fan_out_fan_in_of_1000_is_fast() -> None:
    mids = [f"m{i}" for i in range(1000)]
    r = Run(_plan(["root", *mids, "sink"], [("root", m) for m in mids] + [(m, "sink") for m in mids]))
    began = time.perf_counter()
    assert len(r.start()) == 1002
    r.ok("root")
    assert r.m.nodes["m0"].state is N.RUNNING and r.m.nodes["sink"].state is N.PENDING
    for mid in mids:
        r.ok(mid)
    elapsed = time.perf_counter() - began
    print(f"1->1000->1 drive: start + 1001 results in {elapsed * 1000:.1f} ms")
    assert r.m.nodes["sink"].state is N.RUNNING
    assert dict(r.dispatches[-1].input_tokens) == {m: r.tokens[m] for m in mids}
    r.ok("sink")
    assert r.m.state is S.SUCCEEDED and len(r.dispatches) == 1002
    assert elapsed < 2.0
    r.assert_legal()


def test_next_deadline_tracks_running_deadlines_and_retries() -> None:
    untimed = Run(_plan(["a"]))
    untimed.start()
    assert untimed.m.next_deadline() is None
    assert Run(_plan([("a", {"max_runtime": "1m"})], dag_slo={"max_runtime": "10s"})).m.next_deadline() == 10.0
    r = Run(_plan([("a", {"max_runtime": "5s"}), "b", "x", ("y", {"retry": {"max_attempts": 2, "backoff_sec": 3}})],
                  [("a", "b")]))
    assert r.m.next_deadline() is None  # nothing running yet
    r.start()
    assert r.m.next_deadline() == 5.0
    r.now = 1.0
    r.fail("y")
    assert r.m.next_deadline() == 4.0  # y's retry comes before a's deadline
    r.tick(3.0)
    assert r.m.nodes["y"].state is N.RUNNING and r.m.next_deadline() == 5.0
    r.now = 4.5
    r.ok("a")
    assert r.m.nodes["b"].state is N.RUNNING and r.m.next_deadline() is None


def test_illegal_transition_raises() -> None:
    with pytest.raises(IllegalTransition):
        check_node_transition("a", N.SUCCEEDED, N.RUNNING)
    with pytest.raises(IllegalTransition):
        check_node_transition("a", N.PENDING, N.RUNNING)  # must be QUEUED first
    check_node_transition("a", N.PENDING, N.QUEUED)
    for terminal in (N.SUCCEEDED, N.CACHED, N.FAILED, N.TIMED_OUT, N.SKIPPED, N.CANCELLED):
        assert terminal.terminal and NODE_TRANSITIONS[terminal] == frozenset()


def test_a_gated_machine_dispatches_only_what_is_admitted():
    plan = _plan(["a", "b", "c"], [("a", "b")], fuse=False)
    run = Run(plan)
    run.m = RunMachine(plan, lambda: run.now, submission_id="s", gated=True)
    assert run.start() == []  # nothing goes to Ray by itself
    assert run.m.waiting() == ["a", "c"] and run.states()["b"] is N.PENDING
    assert [d.node_id for d in run._feed(run.m.admit("c"))] == ["c"]
    assert run.states()["c"] is N.RUNNING and run.m.waiting() == ["a"]
    assert run.m.admit("c") == []  # not waiting any more: a no-op
    run._feed(run.m.admit("a"))
    run.ok("a")
    assert run.m.waiting() == ["b"]  # ready only once a succeeded: no eager dispatch when gated
    run._feed(run.m.admit("b"))
    run.ok("b")
    run.ok("c")
    assert run.m.state is S.SUCCEEDED
    run.assert_legal()


def test_a_gated_fused_chain_goes_with_its_admitted_head_and_each_member_runs_on_its_own():
    plan = _plan(["a", ("b", {"retry": {"max_attempts": 2, "backoff_sec": 5}}), "c", "z"],
                 [("a", "b"), ("b", "c"), ("c", "z")])
    assert [plan.nodes[n].fused_after for n in plan.order] == [None, "a", "b", "c"]
    run = Run(plan)
    run.m = RunMachine(plan, lambda: run.now, submission_id="s", gated=True)
    assert run.start() == [] and run.m.waiting() == ["a"]
    admitted = run._feed(run.m.admit("a"))
    assert [d.node_id for d in admitted] == ["a", "b", "c", "z"]  # one Ray task for the chain (execute/fusion)
    assert dict(admitted[1].input_tokens) == {"a": admitted[0].token}
    assert run.states() == {"a": N.RUNNING, "b": N.PENDING, "c": N.PENDING, "z": N.PENDING}
    run.ok("a")
    assert run.states()["b"] is N.RUNNING and run.m.waiting() == []  # no second admission inside the chain
    run.fail("b")  # the chain retries from b, after b's backoff: a stays SUCCEEDED, c and z are withdrawn
    assert run.states() == {"a": N.SUCCEEDED, "b": N.RETRYING, "c": N.PENDING, "z": N.PENDING}
    assert run.m.nodes["c"].token is None and run.tick(4.9) == []
    assert run.tick(0.1) == [] and run.m.waiting() == ["b"]  # its retry is admitted again, as a new head
    again = run._feed(run.m.admit("b"))
    assert [(d.node_id, d.attempt) for d in again] == [("b", 2), ("c", 1), ("z", 1)]
    assert dict(again[0].input_tokens) == {"a": run.tokens["a"]}  # a's outputs, not a new run of a
    for node in "bcz":
        run.ok(node)
    assert run.m.state is S.SUCCEEDED
    assert [len(run.m.nodes[n].attempts) for n in "abcz"] == [1, 2, 1, 1]
    run.assert_legal()


def test_a_gated_retry_waits_for_admission_again_and_cancel_empties_the_queue():
    plan = _plan([("a", {"retry": {"max_attempts": 2, "backoff_sec": 5}}), "z"])
    run = Run(plan)
    run.m = RunMachine(plan, lambda: run.now, submission_id="s", gated=True)
    run.start()
    run._feed(run.m.admit("a"))
    run.fail("a")
    assert run.states()["a"] is N.RETRYING and run.m.waiting() == ["z"]
    run.tick(5)
    assert run.m.waiting() == ["z", "a"] and run.states()["a"] is N.QUEUED
    run.m.cancel()
    assert run.m.waiting() == [] and run.m.admit("a") == []
    run.assert_legal()


def test_preemption_requeues_without_charging_the_retry_budget():
    plan = _plan([("a", {"retry": {"max_attempts": 1}})])
    run = Run(plan)
    run.m = RunMachine(plan, lambda: run.now, submission_id="s", gated=True)
    run.start()
    run._feed(run.m.admit("a"))
    token = run.tokens["a"]
    actions = run.m.preempt("a", "preempted for s2/b (critical)")
    assert actions == [Kill("a", token, KillCause.PREEMPTED, "preempted for s2/b (critical)")]
    assert not actions[0].cause.force  # cooperative first: the attempt may stop cleanly within its grace
    assert run.states()["a"] is N.QUEUED and run.m.waiting() == ["a"]
    assert run.ok("a", token) == []  # the stopped attempt's late result is ignored
    run._feed(run.m.admit("a"))  # max_attempts 1, yet it runs again: a preemption is not a failure
    run.ok("a")
    assert run.m.state is S.SUCCEEDED and len(run.m.nodes["a"].attempts) == 2
    run.assert_legal()
