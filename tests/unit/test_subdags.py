"""Kind `pipeline`, pure: a child DAG (registered or inline) expanded into `<node>.<child>` nodes at submit, its
params and declared outs, conditions carried over, and what is refused (cycles, unknown pipelines, bad fields)."""

from __future__ import annotations

from typing import Any

import pytest
import yaml

from fabric.errors import ErrorCode, NotFoundError, SpecError
from fabric.plan import compile_plan
from fabric.spec import load_spec
from fabric.spec.subdags import MAX_NESTING, expand

pytestmark = pytest.mark.timeout(30)

CHILD = {"version": 1, "pipeline_id": "sweep", "params": {"k": {"type": "int", "default": 2}},
         "nodes": [{"id": "grid", "kind": "python_task", "entrypoint": "m:g", "params": {"n": "{{ params.k }}"},
                    "ins": ["seed"], "outs": ["grid"]},
                   {"id": "pick", "kind": "python_task", "entrypoint": "m:p", "ins": ["grid"],
                    "outs": ["best_sharpe"], "when": "params.k > 1 and grid.n != null"}]}


def _parent(**sub: Any) -> dict[str, Any]:
    return {"version": 1, "pipeline_id": "outer", "nodes": [
        {"id": "seed", "kind": "python_task", "entrypoint": "m:s", "outs": ["seed"]},
        {"id": "sub", "kind": "pipeline", "ins": ["seed"], "outs": ["best_sharpe"],
         "params": {"pipeline": "sweep", "params": {"k": 3}}, **sub},
        {"id": "report", "kind": "python_task", "entrypoint": "m:r", "ins": ["best_sharpe"],
         "when": "best_sharpe > 0"}]}


def _resolver(registry: dict[str, dict[str, Any]]):
    def resolve(name: str, version: int | None) -> dict[str, Any]:
        if name not in registry:
            raise NotFoundError(f"no pipeline {name!r}")
        return registry[name]
    return resolve


def test_a_registered_pipeline_becomes_nested_nodes_wired_to_the_parent():
    spec = load_spec(expand(_parent(), _resolver({"sweep": CHILD})))
    assert [n.id for n in spec.nodes] == ["seed", "sub.grid", "sub.pick", "report"]
    assert {(e.from_, e.to) for e in spec.edges} == {("seed", "sub.grid"), ("sub.grid", "sub.pick"),
                                                     ("sub.pick", "report")}
    assert spec.node("sub.grid").params == {"n": 3}  # the child's params, as the pipeline node set them
    assert spec.node("sub.pick").when == "(3 > 1) and (grid.n != null)"  # its params are values in the parent
    plan = compile_plan(spec)
    assert [(w.name, w.producer) for w in plan.nodes["report"].inputs] == [
        ("best_sharpe", "sub.pick"), ("?best_sharpe", "sub.pick")]
    assert [(w.name, w.producer) for w in plan.nodes["sub.grid"].inputs] == [("seed", "seed")]


def test_an_inline_sub_spec_and_the_pipeline_nodes_condition_guarding_its_roots():
    inline = _parent(when="seed != null", params={"spec": CHILD})
    spec = load_spec(expand(inline, None))
    assert spec.node("sub.grid").when == "seed != null"
    assert spec.node("sub.pick").when == "(2 > 1) and (grid.n != null)"  # the child's default k


@pytest.mark.parametrize("sub, where, code, message", [
    ({"params": {"pipeline": "ghost"}}, "nodes[1].params.pipeline", ErrorCode.KIND_PARAMS, "no registered pipeline"),
    ({"params": {}}, "nodes[1].params", ErrorCode.KIND_PARAMS, "exactly one"),
    ({"params": {"pipeline": "sweep", "spec": CHILD}}, "nodes[1].params", ErrorCode.KIND_PARAMS, "exactly one"),
    ({"entrypoint": "m:f"}, "nodes[1].entrypoint", ErrorCode.SPEC_UNKNOWN_FIELD, "takes no 'entrypoint'"),
    ({"outs": ["nope"]}, "nodes[1].outs[0]", ErrorCode.SPEC_UNWIRED_INPUT, "produces no out 'nope'"),
    ({"params": {"pipeline": "sweep", "params": {"k": "x"}}}, "nodes[1].params.params.k", ErrorCode.PARAM_TYPE,
     "is a int"),
])
def test_what_a_pipeline_node_gets_wrong_is_a_problem_at_its_field(sub, where, code, message):
    with pytest.raises(SpecError) as raised:
        expand(_parent(**sub), _resolver({"sweep": CHILD}))
    assert [(p.where, p.code) for p in raised.value.problems] == [(where, code)]
    assert message in raised.value.problems[0].message


def test_an_invalid_child_is_reported_inside_it():
    broken = {**CHILD, "nodes": [{**CHILD["nodes"][0], "kind": "nope"}, CHILD["nodes"][1]]}
    with pytest.raises(SpecError) as raised:
        expand(_parent(), _resolver({"sweep": broken}))
    assert raised.value.problems[0].where.startswith("nodes[1].pipeline[sweep].nodes[0].kind")


def test_cycles_through_registered_pipelines_and_depth_are_refused():
    loop_a = {"version": 1, "pipeline_id": "a", "nodes": [{"id": "x", "kind": "pipeline", "params": {"pipeline": "b"}}]}
    loop_b = {"version": 1, "pipeline_id": "b", "nodes": [{"id": "y", "kind": "pipeline", "params": {"pipeline": "a"}}]}
    with pytest.raises(SpecError) as raised:
        expand(loop_a, _resolver({"a": loop_a, "b": loop_b}), name="a")
    problem = raised.value.problems[0]
    assert problem.code == ErrorCode.SPEC_CYCLE and "a -> b -> a" in problem.message
    leaf = {"version": 1, "pipeline_id": "leaf", "nodes": [{"id": "n", "kind": "python_task", "entrypoint": "m:f"}]}
    deep = leaf
    for level in range(MAX_NESTING + 1):
        deep = {"version": 1, "pipeline_id": f"p{level}",
                "nodes": [{"id": f"l{level}", "kind": "pipeline", "params": {"spec": deep}}]}
    with pytest.raises(SpecError, match="nest deeper"):
        expand(deep, None)


def test_a_spec_without_pipeline_nodes_is_unchanged_and_registered_ones_need_a_registry():
    assert expand(CHILD, None) == CHILD
    with pytest.raises(SpecError, match="cannot be looked up here"):
        expand(_parent(), None)


def test_a_fb_dag_function_is_a_step_of_another_dag_with_nested_node_ids():
    import fabric as fb
    from tests import nodes

    value = fb.task(nodes.value)
    add = fb.task(nodes.add)

    @fb.dag
    def plus_one(x):
        return add(value(x), 1.0)

    with fb.DAG("outer") as dag:
        first = plus_one(2.0)
        second = plus_one(3.0)
        add(first, second)
    spec = dag.to_spec()
    assert [n.id for n in spec.nodes] == ["plus_one.value", "plus_one.add", "plus_one_2.value", "plus_one_2.add",
                                          "add"]
    assert spec.node("add").ins == ["a=plus_one_add", "b=plus_one_2_add"]  # a step's outs are its own
    plan = compile_plan(spec)
    assert [w.producer for w in plan.nodes["add"].inputs] == ["plus_one.add", "plus_one_2.add"]
    standalone = plus_one(5.0)  # outside any DAG: its own DAG
    assert isinstance(standalone, fb.DAG) and [n.id for n in standalone.to_spec().nodes] == ["value", "add"]


def test_fabric_validate_checks_an_inline_sub_pipeline_and_says_a_registered_one_needs_a_registry(tmp_path):
    from typer.testing import CliRunner

    from fabric.cli import app
    from fabric.cli.exits import ExitCode

    inline = {**_parent(params={"spec": CHILD, "params": {"k": 3}}), "pipeline_id": "inline"}
    path = tmp_path / "inline.yaml"
    path.write_text(yaml.safe_dump(inline))
    ok = CliRunner().invoke(app, ["validate", str(path)], env={"COLUMNS": "200"})
    assert ok.exit_code == ExitCode.OK and "4 nodes" in ok.output, ok.output
    path.write_text(yaml.safe_dump(_parent()))
    refused = CliRunner().invoke(app, ["validate", str(path)], env={"COLUMNS": "200"})
    assert refused.exit_code == ExitCode.BAD_INPUT and "cannot be looked up here" in refused.output


def test_a_pipeline_node_passes_the_runs_params_on_to_its_child():
    parent = {**_parent(params={"pipeline": "sweep", "params": {"k": "{{ params.depth }}"}}),
              "params": {"depth": {"type": "int", "default": 4}}}
    resolve = _resolver({"sweep": CHILD})
    assert load_spec(expand(parent, resolve, given={"depth": 7})).node("sub.grid").params == {"n": 7}
    assert load_spec(expand(parent, resolve)).node("sub.grid").params == {"n": 4}  # the parent's default
    with pytest.raises(SpecError) as raised:  # a value the child's type refuses, at the field that passed it
        expand({**parent, "params": {"depth": {"type": "string", "default": "deep"}}}, resolve)
    assert [(p.code, p.where) for p in raised.value.problems] == [(ErrorCode.PARAM_TYPE, "nodes[1].params.params.k")]
