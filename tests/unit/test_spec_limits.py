"""Input that cannot hurt: validation linear in the nodes with a capped problem list, YAML alias budgets,
bounded nesting, and a wire document that is never a path."""

from __future__ import annotations

import time

import pytest

from fabric.errors import MAX_PROBLEMS, ErrorCode, SpecError
from fabric.plan import compile_plan
from fabric.spec import load_spec
from fabric.spec._text import Suggester
from fabric.spec.load import MAX_DEPTH, read_document


def _spec(n: int, broken: str = "") -> dict:
    nodes, edges = [], []
    for i in range(n):
        node = {"id": f"node_{i}", "kind": "pythn_task" if broken == "kind" else "python_task",
                "entrypoint": "jobs.quant.data:generate_market_data", "outs": [f"o{i}", "shared"]}
        if broken == "unwired":
            node["ins"] = [f"missing_{i}"]
        if broken == "ambiguous":
            node["ins"] = ["shared"]
        nodes.append(node)
        if broken == "dangling":
            edges.append({"from": f"nod_{i}x", "to": f"node_{i}"})
        elif i:
            edges.append({"from": f"node_{i - 1}", "to": f"node_{i}"})
    return {"version": 1, "pipeline_id": "big", "nodes": nodes, "edges": edges}


@pytest.mark.parametrize("broken", ["kind", "dangling", "unwired", "ambiguous"])
def test_a_problem_in_each_of_1500_nodes_is_answered_fast_with_a_capped_list(broken):
    started = time.process_time()
    with pytest.raises(SpecError) as caught:
        load_spec(_spec(1500, broken))
    spent = time.process_time() - started
    # It was 75 s (dangling edges: a did-you-mean over every id for every edge) and an 11 MB message.
    assert spent < 3.0, f"{broken}: {spent:.2f} s of CPU"
    error = caught.value
    assert len(error.problems) == MAX_PROBLEMS
    assert f"{1499 if broken == 'ambiguous' else 1500} problems (the first {MAX_PROBLEMS} are listed)" in error.message
    assert len(str(error)) < 100_000


def _two_producers(n: int) -> dict:
    """Nodes `a` and `b` both produce `x`; a chain below `b` reads `x` in every node (from `b`)."""
    nodes = [{"id": "a", "kind": "python_task", "entrypoint": "m:f", "outs": ["x"]},
             {"id": "b", "kind": "python_task", "entrypoint": "m:f", "outs": ["x"]}]
    edges = []
    for i in range(n):
        nodes.append({"id": f"c{i}", "kind": "python_task", "entrypoint": "m:f", "ins": ["x"], "outs": [f"y{i}"]})
        edges.append({"from": f"c{i - 1}" if i else "b", "to": f"c{i}"})
    return {"version": 1, "pipeline_id": "p", "nodes": nodes, "edges": edges}


def test_validation_and_planning_grow_linearly():
    def cost(spec: dict) -> float:
        started = time.process_time()
        try:
            compile_plan(load_spec(spec))
        except SpecError:
            pass
        return time.process_time() - started

    shapes = {"chain": _spec, "dangling": lambda n: _spec(n, "dangling"),
              "ambiguous": lambda n: _spec(n, "ambiguous"), "two producers": _two_producers}
    for name, build in shapes.items():
        small, large = min(cost(build(400)) for _ in range(3)), min(cost(build(3200)) for _ in range(2))
        # 8x the nodes: about 8x the time when linear, 64x when quadratic.
        assert large < 20 * small + 0.2, f"{name}: 400 nodes {small:.3f} s, 3200 nodes {large:.3f} s"


def test_planning_picks_the_upstream_producer_among_many():
    plan = compile_plan(load_spec(_two_producers(300)))
    assert {plan.nodes[f"c{i}"].inputs[0].producer for i in range(300)} == {"b"}


def test_hints_still_name_the_closest_id_among_thousands():
    suggest = Suggester(f"node_{i}" for i in range(5000))
    assert suggest("node_12x") == "did you mean 'node_12'? "
    assert suggest("nodee_4321") == "did you mean 'node_4321'? "
    assert suggest("x" * 10_000) == ""
    with pytest.raises(SpecError) as caught:
        load_spec(_spec(1500, "dangling"))
    assert "did you mean" in caught.value.problems[0].fix


def test_an_alias_bomb_is_refused_by_its_expanded_size():
    bomb = ["version: 1", "pipeline_id: bomb", f"a0: &a0 \"{'x' * 900}\""]
    bomb += [f"a{k}: &a{k} [{', '.join([f'*a{k - 1}'] * 9)}]" for k in range(1, 6)]
    text = "\n".join(bomb) + "\nnodes: [{id: n, kind: python_task, entrypoint: 'm:f', params: {p: *a5}}]\n"
    assert len(text) < 1500  # 900 bytes x 9^5: 53 MB once expanded
    with pytest.raises(SpecError) as caught:
        read_document(text)
    problem = caught.value.problems[0]
    assert problem.code == ErrorCode.SPEC_TOO_LARGE and problem.where.startswith("dag_spec, line ")
    assert "bytes through aliases" in problem.message


def test_a_few_aliases_within_the_budget_still_load():
    text = ("version: 1\npipeline_id: ok\ndefaults: &d {cpu: 1}\n"
            "nodes:\n  - {id: a, kind: python_task, entrypoint: 'm:f', params: {r: *d}}\n"
            "  - {id: b, kind: python_task, entrypoint: 'm:f', params: {r: *d}}\n")
    assert read_document(text)["nodes"][1]["params"] == {"r": {"cpu": 1}}


def test_nesting_past_the_limit_names_the_path():
    params: dict = {}
    inner = params
    for _ in range(300):
        inner["a"] = {}
        inner = inner["a"]
    spec = {"version": 1, "pipeline_id": "deep",
            "nodes": [{"id": "n", "kind": "python_task", "entrypoint": "m:f", "params": params}]}
    for reader, prefix in ((load_spec, "nodes[0].params.a"), (read_document, "dag_spec.nodes[0].params.a")):
        with pytest.raises(SpecError) as caught:
            reader(spec)
        problem = caught.value.problems[0]
        assert problem.code == ErrorCode.SPEC_TOO_LARGE and problem.where.startswith(prefix)
        assert f"more than {MAX_DEPTH} levels" in problem.message


def test_a_wire_document_is_never_a_path(tmp_path):
    spec_file = tmp_path / "secret.yaml"
    spec_file.write_text("version: 1\npipeline_id: from_disk\nnodes: [{id: a, kind: python_task, entrypoint: 'm:f'}]\n")
    for text in (str(spec_file), f"  {spec_file}\n", str(spec_file).encode()):
        with pytest.raises(SpecError) as caught:
            read_document(text)
        assert caught.value.problems[0].where == "dag_spec" and "never opened" in caught.value.problems[0].message
    assert load_spec(spec_file).pipeline_id == "from_disk"  # the CLI and SDK still read files on their side
