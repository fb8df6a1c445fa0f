"""Chain fusion: the planner's pure decisions (plan/fuse.py), the engine's grouping and wiring of a batch of
dispatches (execute/fusion.py), and a fused task's body run in this process (execute/chain.py), without Ray."""

from __future__ import annotations

from typing import Any

import pytest

from fabric.execute.chain import EXTERNAL, ChainCall, run_chain
from fabric.execute.fusion import fused_groups, wire_chain
from fabric.execute.worker import NotRun
from fabric.kinds import NodeCall
from fabric.plan import compile_plan
from fabric.plan.fuse import MAX_CHAIN, chains
from fabric.schedule import Dispatch, Kill
from fabric.spec import load_spec
from fabric.states import KillCause

pytestmark = pytest.mark.timeout(30)


def node(node_id: str, *ins: str, **extra: Any) -> dict[str, Any]:
    return {"id": node_id, "kind": "python_task", "entrypoint": "m:f", "outs": [node_id], "ins": list(ins), **extra}


def plan_of(*nodes: dict[str, Any], fuse: bool = True, edges: list[dict[str, str]] | None = None, **dag: Any) -> Any:
    edges = edges or [{"from": i.partition("=")[2] or i, "to": n["id"]} for n in nodes for i in n["ins"]]
    return compile_plan(load_spec({"version": 1, "pipeline_id": "p", "nodes": list(nodes), "edges": edges, **dag}),
                        fuse=fuse)


def fused(plan: Any) -> list[tuple[str, ...]]:
    return chains(plan.order, {n: p.fused_after for n, p in plan.nodes.items() if p.fused_after})


def test_a_straight_chain_is_one_fused_task_and_fusion_can_be_turned_off() -> None:
    nodes = [node("a"), node("b", "a"), node("c", "b"), node("d", "c")]
    assert fused(plan_of(*nodes)) == [("a", "b", "c", "d")]
    assert fused(plan_of(*nodes, fuse=False)) == []
    assert plan_of(*nodes).plan_hash == plan_of(*nodes, fuse=False).plan_hash  # the same work, the same plan


def test_fan_out_and_fan_in_end_a_chain() -> None:
    #  a → b → c ─┬→ d → e
    #             └→ f → g ─→ h ← x
    plan = plan_of(node("a"), node("b", "a"), node("c", "b"), node("d", "c"), node("e", "d"), node("f", "c"),
                   node("g", "f"), node("x"), node("h", "g", "x"))
    assert fused(plan) == [("a", "b", "c"), ("d", "e"), ("f", "g")]
    assert plan.nodes["h"].fused_after is None and plan.nodes["d"].fused_after is None


@pytest.mark.parametrize("extra", [
    {"fuse": False}, {"cache": True}, {"resources": {"gpu": 1}}, {"resources": {"workers": 2}},
    {"resources": {"cpu": 2}}, {"env": {"MODE": "x"}}, {"pool": "big"}, {"slo": {"max_runtime": "5s"}},
    {"slo": {"qos": "spot_ok"}}, {"image": "repo/img:1"}, {"slo": {"priority": "high"}},
], ids=lambda extra: next(iter(extra)) + ":" + str(next(iter(extra.values()))))
def test_a_member_that_needs_a_task_of_its_own_or_differs_is_never_fused(extra: dict[str, Any]) -> None:
    plan = plan_of(node("a"), node("b", "a", **extra), node("c", "b"), node("d", "c"))
    assert fused(plan) == [("c", "d")]  # b breaks the chain on both sides; c, d still fuse


def test_self_placing_kinds_are_never_fused() -> None:
    train = {"id": "t", "kind": "train", "ins": ["a"], "outs": ["t"], "entrypoint": "m:f",
             "params": {"config": {}}}
    plan = plan_of(node("a"), train, node("c", "t"), node("d", "c"))
    assert plan.nodes["t"].fused_after is None and plan.nodes["c"].fused_after is None
    assert fused(plan) == [("c", "d")]


def test_a_chain_longer_than_the_cap_is_split() -> None:
    nodes = [node("c0")] + [node(f"c{i}", f"c{i - 1}") for i in range(1, MAX_CHAIN + 5)]
    groups = fused(plan_of(*nodes))
    assert [len(g) for g in groups] == [MAX_CHAIN, 5]


def dispatches(plan: Any, tokens: dict[str, int], attempt: int = 1) -> list[Dispatch]:
    return [Dispatch(n, attempt, t, tuple((u, tokens[u]) for u in plan.nodes[n].upstream if u in tokens))
            for n, t in tokens.items()]


def test_the_engine_groups_only_members_dispatched_together_and_wired_to_each_other() -> None:
    plan = plan_of(node("a"), node("b", "a"), node("c", "b"), node("x"))
    actions: list[Dispatch | Kill] = [*dispatches(plan, {"a": 1, "b": 2, "c": 3, "x": 4}),
                                      Kill("y", 9, KillCause.CANCELLED)]
    assert {h: [d.node_id for d in g] for h, g in fused_groups(plan, actions).items()} == {"a": ["a", "b", "c"]}
    # a retry of b: it heads a new group with c; a is not dispatched again
    assert {h: [d.node_id for d in g] for h, g in fused_groups(plan, dispatches(plan, {"b": 7, "c": 8})).items()} \
        == {"b": ["b", "c"]}
    stale = [Dispatch("b", 1, 2, (("a", 99),)), Dispatch("a", 1, 1, ())]  # b wired to another dispatch of a
    assert fused_groups(plan, stale) == {}


def test_a_member_reads_earlier_members_inside_the_task_and_the_rest_once_from_outside() -> None:
    path = ["src", "mid", "a", "b", "c"]  # b also reads src, an ancestor: an input needs no edge of its own
    plan = plan_of(node("src"), node("mid", "src"), node("a", "mid"), node("b", "a", "x=src"), node("c", "b"),
                   edges=[{"from": u, "to": v} for u, v in zip(path, path[1:], strict=False)])
    assert fused(plan) == [tuple(path)]
    # dispatch a retry of a..c: src and mid are outside, src read by b
    group = [Dispatch("a", 2, 10, (("mid", 5),)), Dispatch("b", 1, 11, (("a", 10), ("src", 4))),
             Dispatch("c", 1, 12, (("b", 11),))]
    refs = {("mid", 5, "mid"): "ref-mid", ("src", 4, "src"): "ref-src"}
    inputs, sources = wire_chain(plan, group, {}, lambda p, t, o: refs[(p, t, o)])
    assert inputs == ["ref-mid", "ref-src"]
    assert sources == [((EXTERNAL, 0),), ((0, 0), (EXTERNAL, 1)), ((1, 0),)]


def call(node_id: str, entry: str, home: str, *inputs: str, attempt: int = 1) -> NodeCall:
    return NodeCall(submission_id="s", pipeline_id="p", node_id=node_id, attempt=attempt, kind="python_task",
                    entrypoint=entry, params={}, input_names=inputs, result_slots=(node_id,),
                    declared_outs=(node_id,), home=home)


def test_a_fused_task_keeps_what_succeeded_and_marks_what_a_failure_left_unproduced(tmp_path: Any) -> None:
    home = str(tmp_path)
    chain = ChainCall(
        (call("a", "tests.unit.test_fuse:plus_one", home, "x"), call("b", "tests.unit.test_fuse:boom", home, "x"),
         call("c", "tests.unit.test_fuse:plus_one", home, "x")),
        (((EXTERNAL, 0),), ((0, 0),), ((1, 0),)))
    outcomes, values = run_chain(chain, [41])
    assert values[0] == 42 and isinstance(values[1], NotRun) and isinstance(values[2], NotRun)
    assert outcomes[0][1] is None and outcomes[0][0].ended_at is not None
    assert outcomes[1][1] is not None and outcomes[1][1].type == "ValueError"
    assert outcomes[1][0].log_tail == "about to fail\n"  # its own log
    assert outcomes[2][1] is not None and outcomes[2][1].type == "NotRun"
    # a node outside the task that reads an unproduced value fails before its code runs
    alone = ChainCall((call("d", "tests.unit.test_fuse:plus_one", home, "x"),), (((EXTERNAL, 0),),))
    (report, error), = run_chain(alone, [values[2]])[0]
    assert error is not None and error.type == "NotRun" and "b" in error.message


def plus_one(x: int) -> int:
    return x + 1


def boom(x: int) -> int:
    print("about to fail")
    raise ValueError("boom")


def test_the_ray_task_body_takes_the_pickled_chain_and_its_secrets_beside_it(tmp_path: Any) -> None:
    import pickle

    from fabric.execute.chain import run_pickled_chain
    from fabric.execute.untrusted import decode_outcomes

    home = str(tmp_path)
    chain = ChainCall((call("a", "tests.unit.test_fuse:plus_one", home, "x"),
                       call("b", "tests.unit.test_fuse:plus_one", home, "x")), (((EXTERNAL, 0),), ((0, 0),)))
    pickled, a, b = run_pickled_chain(pickle.dumps(chain), pickle.dumps({"scope": {"KEY": "v"}}), 1)
    assert (a, b) == (2, 3)
    assert [error for _, error in decode_outcomes(pickled, 2)] == [None, None]


def test_successes_are_reported_while_the_task_runs_batched_and_the_last_only_in_its_return(tmp_path: Any) -> None:
    home = str(tmp_path)
    fast = [call(f"f{i}", "tests.unit.test_fuse:plus_one", home, "x") for i in range(4)]
    chain = ChainCall((call("a", "tests.unit.test_fuse:plus_one", home, "x"),
                       call("s", "tests.unit.test_fuse:slow_plus_one", home, "x"), *fast),
                      tuple(((EXTERNAL, 0),) if i == 0 else ((i - 1, 0),) for i in range(6)))
    sent: list[list[str]] = []
    outcomes, values = run_chain(chain, [0], lambda items: sent.append([node for node, _, _ in items]))
    assert values == [1, 2, 3, 4, 5, 6] and all(error is None for _, error in outcomes)
    # a at once (a slow member follows it); s at once (the last report was long ago); f0..f2 in one batch or
    # a few, never one call each; f3, the last, only in the return value
    assert sent[:2] == [["a"], ["s"]]
    assert [n for batch in sent[2:] for n in batch] in (["f0", "f1", "f2"], ["f0"], ["f0", "f1"], [])
    assert len(sent) <= 3


def slow_plus_one(x: int) -> int:
    import time

    time.sleep(0.2)
    return x + 1
