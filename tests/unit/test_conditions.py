"""`when:` conditions, pure: the grammar and its bounds, evaluation types, submit-time checks, the plan's wiring,
and skip propagation through the run machine with the worker's gate deciding (no Ray)."""

from __future__ import annotations

import re
from typing import Any

import numpy as np
import pytest
import yaml

from fabric.errors import ErrorCode, SpecError
from fabric.execute.conditions import Skipped, gate
from fabric.execute.worker import NodeFailure, attempt_node
from fabric.kinds import NodeCall
from fabric.plan import ExecutionPlan, compile_plan
from fabric.schedule.run import Dispatch, Kill, RunMachine
from fabric.spec import load_spec
from fabric.spec.expr import (
    MAX_DEPTH,
    MAX_LENGTH,
    BoolOp,
    Compare,
    ConditionError,
    ExprError,
    Lit,
    Name,
    Not,
    evaluate,
    names,
    parse,
)
from fabric.states import NodeState, SubmissionState
from fabric.types import AttemptReport, ErrorInfo

pytestmark = pytest.mark.timeout(30)


def _eval(text: str, **values: Any) -> bool:
    def lookup(name: Name) -> Any:
        value = values[name.parts[0]]
        for key in name.parts[1:]:
            value = value[key]
        return value

    return evaluate(parse(text), lookup)


# -- the grammar ---------------------------------------------------------------------------------------------

def test_precedence_is_not_then_and_then_or():
    tree = parse("a or b and not c")
    assert tree == BoolOp("or", (Name(("a",)), BoolOp("and", (Name(("b",)), Not(Name(("c",)))))))
    assert parse("(a or b) and c") == BoolOp("and", (BoolOp("or", (Name(("a",)), Name(("b",)))), Name(("c",))))
    assert parse("not x == 1") == Not(Compare("==", Name(("x",)), Lit(1)))


def test_literals_membership_and_dotted_names():
    tree = parse("pick.best_sharpe >= -1.5e0 and params.mode not in ['a', \"b\\\"q\"] and flag == true")
    assert [n.dotted for n in names(tree)] == ["pick.best_sharpe", "params.mode", "flag"]
    assert _eval("x in [1, 2, 3]", x=2) and _eval("x not in [1, 2]", x=3)
    assert _eval("'ab' in s", s="cabd") and _eval("k in m", k="a", m={"a": 1})
    assert _eval("v == null", v=None) and _eval("s == 'it\\'s'", s="it's")
    assert _eval("a.b.c > 0.5", a={"b": {"c": 1}})
    assert _eval("not (x < 1 or x > 3)", x=2)


@pytest.mark.parametrize("text, reason", [
    ("", "empty"),
    ("a >", "expected a value"),
    ("a < b < c", "do not chain"),
    ("a = 1", "unexpected character '='"),
    ("1 +", "unexpected character '+'"),
    ("(a", "expected ')'"),
    ("a b", "after a complete expression"),
    ("True", "write 'true'"),
    ("None == x", "write 'null'"),
    ("'open", "unexpected character"),
    ("'\\x41' == a", "unknown escape"),
    ("a.and == 1", "keyword"),
])
def test_syntax_errors_say_why_and_where(text, reason):
    with pytest.raises(ExprError, match=re.escape(reason)) as raised:
        parse(text)
    assert 0 <= raised.value.position <= len(text)


@pytest.mark.parametrize("text", [
    "__import__('os').system('id')", "x.__class__.__mro__", "a.__globals__ == 1", "exec('1')", "x[0] == 1",
    "lambda: 1", "x if y else z", "f(x)", "a + b > 1", "{'a': 1} == x", "1 if true else 2",
])
def test_nothing_but_the_grammar_parses(text):
    with pytest.raises(ExprError):
        parse(text)


def test_size_and_depth_are_bounded():
    parse("(" * MAX_DEPTH + "a" + ")" * MAX_DEPTH)
    with pytest.raises(ExprError, match="nests deeper"):
        parse("(" * (MAX_DEPTH + 1) + "a" + ")" * (MAX_DEPTH + 1))
    with pytest.raises(ExprError, match="nests deeper"):
        parse("not " * (MAX_DEPTH + 1) + "a")
    with pytest.raises(ExprError, match="nests deeper"):
        parse("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1))
    with pytest.raises(ExprError, match="characters long"):
        parse("a" * (MAX_LENGTH + 1))
    with pytest.raises(ExprError, match="tokens"):
        parse(" or ".join(["a"] * 150))


# -- evaluation: no truthiness, no cross-type surprises ---------------------------------------------------

def test_wrong_types_are_condition_errors_not_python_behaviour():
    with pytest.raises(ConditionError, match="compares two numbers or two strings"):
        _eval("x > 0", x="3")
    with pytest.raises(ConditionError, match="must be true or false"):
        _eval("x", x=1)
    with pytest.raises(ConditionError, match="takes true or false"):
        _eval("x and true", x=None)
    with pytest.raises(ConditionError, match="needs a list"):
        _eval("1 in x", x=5)
    with pytest.raises(ConditionError, match="plain values"):
        _eval("x == 1", x=object())
    with pytest.raises(ConditionError, match="NaN"):
        _eval("x > 0", x=float("nan"))
    assert _eval("x == 1", x=True) is False  # a boolean is not the number 1
    assert _eval("x != '1'", x=1)
    assert _eval("x > 0 and y < 1", x=np.int64(1), y=np.float32(0.5))  # numpy scalars are numbers


def test_and_or_short_circuit_on_booleans():
    assert _eval("false and x", x="never evaluated") is False
    assert _eval("true or x", x="never evaluated") is True


# -- submit-time checks: 422 naming nodes[i].when ------------------------------------------------------------

def _doc(when: str | None = None, **report: Any) -> dict[str, Any]:
    return {"version": 1, "pipeline_id": "p", "params": {"mode": {"type": "string", "default": "full"}},
            "nodes": [{"id": "pick", "kind": "python_task", "entrypoint": "m:f", "outs": ["best_sharpe", "best"]},
                      {"id": "report", "kind": "python_task", "entrypoint": "m:g",
                       **({"when": when} if when is not None else {}), **report}]}


@pytest.mark.parametrize("when, message", [
    ("best_sharpe >", "not a condition: expected a value"),
    ("nope > 0", "unknown name 'nope'"),
    ("params.other == 1", "params.other is not a declared pipeline param"),
    ("pick.zz > 0", "upstream node 'pick' has no out 'zz'"),
    ("pick > 0", "'pick' is a node, not a value"),
    ("__import__('os')", "not a condition"),
])
def test_a_bad_condition_is_a_spec_condition_problem_at_its_field(when, message):
    with pytest.raises(SpecError) as raised:
        load_spec(_doc(when))
    problems = raised.value.problems
    assert [(p.code, p.where) for p in problems] == [(ErrorCode.SPEC_CONDITION, "nodes[1].when")]
    assert message in problems[0].message and problems[0].fix


def test_a_condition_reads_are_data_dependencies_and_on_skipped_is_checked():
    spec = load_spec(_doc("best_sharpe > 0 and params.mode == 'full'"))
    assert [(e.from_, e.to) for e in spec.edges] == [("pick", "report")]
    with pytest.raises(SpecError) as raised:
        load_spec(_doc(on_skipped="sometimes"))
    assert raised.value.problems[0].where == "nodes[1].on_skipped"
    with pytest.raises(SpecError, match="cannot be combined with cache"):
        load_spec(_doc(on_skipped="run", cache=True))


def test_the_plan_wires_what_the_condition_reads():
    plan = compile_plan(load_spec(_doc("best_sharpe > 0 and pick.best.x == 1 and params.mode == 'full'",
                                       ins=["best"])))
    report = plan.nodes["report"]
    assert [(w.name, w.producer, w.out) for w in report.inputs] == [
        ("best", "pick", "best"), ("?best_sharpe", "pick", "best_sharpe"), ("?pick.best", "pick", "best")]
    assert report.when_params == {"mode": "full"}
    assert plan.consumed_outs()["pick"] == ("best", "best_sharpe")
    other = compile_plan(load_spec(_doc("best_sharpe > 1", ins=["best"]))).nodes["report"]
    assert other.content_hash != report.content_hash  # the condition is part of what the node computes


# -- the worker's gate ---------------------------------------------------------------------------------------

def _call(when: str | None, input_names: tuple[str, ...], **kw: Any) -> NodeCall:
    return NodeCall(submission_id="s", pipeline_id="p", node_id="n", attempt=1, kind="python_task",
                    entrypoint="m:f", params={}, input_names=input_names, result_slots=("out",),
                    declared_outs=("out",), home="/nonexistent", when=when, **kw)


def test_the_gate_drops_condition_values_and_skips_on_false():
    call = _call("best_sharpe > 0 and params.mode == 'full'", ("best", "?best_sharpe"),
                 when_params={"mode": "full"})
    assert gate(call, [{"a": 1}, 0.7]) == ({"best": {"a": 1}}, "")
    assert gate(call, [{"a": 1}, -0.1]) == ({"best": {"a": 1}}, "when is false: " + call.when)
    skipped_input = _call(None, ("a", "b"))
    assert gate(skipped_input, [Skipped("up"), 1])[1] == "upstream up skipped"
    runs_anyway = _call("a == null", ("a", "?a"), on_skipped="run")
    assert gate(runs_anyway, [Skipped("up"), Skipped("up")]) == ({}, "")


def test_a_wrong_typed_value_fails_the_attempt_and_a_false_one_never_runs_the_code(tmp_path):
    call = _call("best_sharpe > 0", ("?best_sharpe",))
    call = NodeCall(**{**call.__dict__, "home": str(tmp_path)})
    with pytest.raises(NodeFailure) as raised:
        attempt_node(call, "high")
    assert raised.value.error.type == "ConditionError" and "compares two numbers" in raised.value.error.message
    report, values = attempt_node(call, -1.0)  # the entrypoint m:f does not exist: it is never imported
    assert report.skipped.startswith("when is false")
    assert len(values) == 1 and isinstance(values[0], Skipped) and values[0].node_id == "n"


# -- skip propagation: the machine and the gate together -----------------------------------------------------

def _branch_plan() -> ExecutionPlan:
    """decide -> (fast | slow), exclusive conditions; join runs with whichever exists; tail follows join;
    after_slow follows slow with the default rule."""
    node = {"kind": "python_task", "entrypoint": "m:f"}
    doc = {"version": 1, "pipeline_id": "branch", "params": {"mode": {"type": "string", "default": "fast"}},
           "nodes": [
               {"id": "decide", **node, "outs": ["mode"]},
               {"id": "fast", **node, "outs": ["fast_out"], "when": "params.mode == 'fast'"},
               {"id": "slow", **node, "outs": ["slow_out"], "when": "params.mode == 'slow'"},
               {"id": "after_slow", **node, "ins": ["slow_out"], "outs": ["x"]},
               {"id": "join", **node, "ins": ["fast_out", "slow_out"], "outs": ["joined"], "on_skipped": "run"},
               {"id": "tail", **node, "ins": ["joined"]},
           ],
           "edges": [{"from": "decide", "to": "fast"}, {"from": "decide", "to": "slow"},
                     {"from": "slow", "to": "after_slow"}, {"from": "fast", "to": "join"},
                     {"from": "slow", "to": "join"}, {"from": "join", "to": "tail"}]}
    return compile_plan(load_spec(doc), fuse=False)


def _drive(plan: ExecutionPlan) -> tuple[RunMachine, dict[str, dict[str, Any]], list[Kill]]:
    """Runs the machine to its end, each dispatch decided by the worker's gate on the values its producers made
    (a SKIPPED producer's value is `Skipped`, as the dispatcher passes it); a node that runs returns its inputs."""
    machine = RunMachine(plan, lambda: 0.0, submission_id="s")
    values: dict[tuple[str, int], list[Any]] = {}
    seen: dict[str, dict[str, Any]] = {}
    kills: list[Kill] = []
    queue: list[Dispatch | Kill] = list(machine.start())
    while queue:
        action = queue.pop(0)
        if isinstance(action, Kill):
            kills.append(action)
            continue
        node = plan.nodes[action.node_id]
        tokens = dict(action.input_tokens)
        inputs = [Skipped(w.producer) if tokens[w.producer] is None else
                  values[(w.producer, tokens[w.producer])][plan.nodes[w.producer].result_slots.index(w.out)]
                  for w in node.inputs]
        call = NodeCall(submission_id="s", pipeline_id=plan.pipeline_id, node_id=node.node_id,
                        attempt=action.attempt, kind=node.kind, entrypoint=node.entrypoint, params=node.params,
                        input_names=tuple(w.name for w in node.inputs), result_slots=node.result_slots,
                        declared_outs=node.outs, home="", when=node.when, when_params=node.when_params,
                        on_skipped=node.on_skipped)
        named, skipped = gate(call, inputs)
        if skipped:
            values[(node.node_id, action.token)] = [Skipped(node.node_id)] * len(node.result_slots)
        else:
            seen[node.node_id] = named
            values[(node.node_id, action.token)] = [dict(named)] * len(node.result_slots)
        queue.extend(machine.on_result(node.node_id, action.token, AttemptReport(skipped=skipped)))
    return machine, seen, kills


def test_a_false_condition_skips_its_node_and_the_default_rule_skips_its_descendants():
    machine, ran, kills = _drive(_branch_plan())
    states = {n: (r.state, r.reason) for n, r in machine.nodes.items()}
    assert states["slow"] == (NodeState.SKIPPED, "when is false: params.mode == 'slow'")
    assert states["after_slow"] == (NodeState.SKIPPED, "upstream slow skipped")
    assert states["fast"][0] is NodeState.SUCCEEDED
    assert states["join"][0] is NodeState.SUCCEEDED and states["tail"][0] is NodeState.SUCCEEDED
    assert ran["join"] == {"fast_out": {}}  # the skipped input is absent, not None
    assert "after_slow" not in ran  # eagerly dispatched, then withdrawn: its code never ran
    assert [k.node_id for k in kills] == ["after_slow"]
    assert machine.state is SubmissionState.SUCCEEDED
    slow = machine.nodes["slow"]
    assert [a.outcome for a in slow.attempts] == [NodeState.SKIPPED]


def test_a_failure_still_fails_the_submission_beside_skips():
    plan = _branch_plan()
    machine = RunMachine(plan, lambda: 0.0, submission_id="s")
    dispatches = {a.node_id: a for a in machine.start() if isinstance(a, Dispatch)}
    assert "slow" not in dispatches  # its edge from decide carries no data: it waits for decide to succeed
    after = machine.on_result("decide", dispatches["decide"].token, AttemptReport())
    dispatches.update({a.node_id: a for a in after if isinstance(a, Dispatch)})
    machine.on_result("slow", dispatches["slow"].token, AttemptReport(skipped="when is false: x"))
    machine.on_result("fast", dispatches["fast"].token, AttemptReport(), ErrorInfo("ValueError", "boom"))
    assert machine.nodes["join"].state is NodeState.SKIPPED
    assert machine.nodes["join"].reason == "upstream fast FAILED"
    assert machine.state is SubmissionState.FAILED


def test_a_restored_machine_counts_skipped_parents_as_settled():
    plan = _branch_plan()
    states = {"decide": NodeState.SUCCEEDED, "fast": NodeState.SUCCEEDED, "slow": NodeState.SKIPPED,
              "after_slow": NodeState.SKIPPED}
    machine = RunMachine.restore(plan, lambda: 0.0, submission_id="s", created_at=0.0, states=states, history={})
    actions = machine.start()
    join = [a for a in actions if isinstance(a, Dispatch) and a.node_id == "join"]
    assert join and dict(join[0].input_tokens)["slow"] is None  # the dispatcher passes Skipped for it
    assert machine.nodes["join"].state is NodeState.RUNNING


# -- the builder: fb.when gives the same spec as YAML --------------------------------------------------------

def test_fb_when_builds_the_same_spec_as_yaml():
    import fabric as fb
    from tests import nodes

    split = fb.task(nodes.split, outs=["low", "high"])
    add = fb.task(nodes.add)
    join = fb.task(nodes.add, id="total", on_skipped="run")
    with fb.DAG("guarded") as dag:
        parts = split(2.0)
        with fb.when("low > 0"):
            first = add(parts["low"], 1.0)
            with fb.when("split.high < 10"):
                second = add(parts.high, 2.0)
        join(first, second)
    yaml_text = """
version: 1
pipeline_id: guarded
nodes:
  - {id: split, kind: python_task, entrypoint: "tests.nodes:split", params: {x: 2.0}, outs: [low, high]}
  - {id: add, kind: python_task, entrypoint: "tests.nodes:add", params: {b: 1.0}, ins: ["a=low"], outs: [add],
     when: "low > 0"}
  - {id: add_2, kind: python_task, entrypoint: "tests.nodes:add", params: {b: 2.0}, ins: ["a=high"], outs: [add_2],
     when: "(low > 0) and (split.high < 10)"}
  - {id: total, kind: python_task, entrypoint: "tests.nodes:add", ins: ["a=add", "b=add_2"], outs: [total],
     on_skipped: run}
edges:
  - {from: split, to: add}
  - {from: split, to: add_2}
  - {from: add, to: total}
  - {from: add_2, to: total}
"""
    from_yaml = load_spec(yaml.safe_load(yaml_text))
    assert dag.to_spec() == from_yaml
    assert load_spec(yaml.safe_load(dag.to_yaml())) == from_yaml
    with pytest.raises(ExprError), fb.when("low >"):
        pass


def test_the_param_sweep_example_guards_its_report_with_a_condition():
    plan = compile_plan(load_spec("jobs/dags/param_sweep.yaml"))
    report = plan.nodes["report"]
    assert report.when == "best_sharpe > 0"
    assert ("?best_sharpe", "pick", "best_sharpe") in [(w.name, w.producer, w.out) for w in report.inputs]
