"""`map:` on a node: YAML, JSON and the `.map(items)` builder give one spec; bad maps are refused at submit."""

from __future__ import annotations

import json

import pytest

import fabric as fb
from fabric.errors import ErrorCode, FabricError, SpecError
from fabric.spec.mapping import child_id, parent_of
from tests import nodes

pytestmark = pytest.mark.timeout(30)

make_table = fb.task(nodes.make_table, outs=["table"])
add = fb.task(nodes.add, max_attempts=2)

YAML = """
version: 1
pipeline_id: mapped
nodes:
  - {id: make_table, kind: python_task, entrypoint: "tests.nodes:make_table", params: {rows: 10}, outs: [table]}
  - {id: add, kind: python_task, entrypoint: "tests.nodes:add", ins: ["a=table"], params: {b: 1.0}, outs: [add],
     slo: {retry: {max_attempts: 2}},
     map: {over: a, max_parallel: 4, min_success_ratio: 0.9, batch_size: 2}}
edges:
  - {from: make_table, to: add}
"""


def test_builder_yaml_and_json_give_the_same_map_spec():
    with fb.DAG("mapped") as dag:
        add.map(make_table(rows=10), b=1.0, max_parallel=4, min_success_ratio=0.9, batch_size=2)
    spec = dag.to_spec()
    assert spec == fb.load_spec(YAML)
    assert fb.load_spec(json.dumps(spec.to_dict())) == spec
    assert fb.load_spec(spec.to_yaml()) == spec
    mapped = spec.node("add").map
    assert mapped is not None and (mapped.over, mapped.max_parallel, mapped.batch_size) == ("a", 4, 2)


def test_map_over_a_named_parameter_and_outside_a_dag():
    with fb.DAG("named") as dag:
        add.map(make_table(), over="b", a=0.5)
    node = dag.to_spec().node("add")
    assert node.map is not None and node.map.over == "b" and node.ins == ["b=table"]
    assert add.map([1.0, 2.0], b=10.0) == [11.0, 12.0]  # plain Python outside a DAG


def test_map_needs_an_upstream_output():
    with fb.DAG("bad"), pytest.raises(FabricError) as caught:
        add.map([1.0, 2.0], b=1.0)
    assert caught.value.code is ErrorCode.SPEC_FIELD and "map" in caught.value.where


@pytest.mark.parametrize(("change", "where"), [
    ({"over": "nope"}, "nodes[1].map.over"),
    ({"over": "a", "min_success_ratio": 0}, "nodes[1].map.min_success_ratio"),
    ({"over": "a", "min_success_ratio": 1.5}, "nodes[1].map.min_success_ratio"),
    ({"over": "a", "batch_size": 0}, "nodes[1].map.batch_size"),
    ({"over": "a", "max_parallel": 0}, "nodes[1].map.max_parallel"),
    ({"over": "a", "typo": 1}, "nodes[1].map.typo"),
])
def test_a_bad_map_names_its_field(change, where):
    raw = fb.load_spec(YAML).to_dict()
    raw["nodes"][1]["map"] = change
    with pytest.raises(SpecError) as caught:
        fb.load_spec(raw)
    assert [p.where for p in caught.value.problems] == [where]


def test_child_ids():
    assert child_id("sweep", 41) == "sweep[41]"
    assert parent_of("sweep[41]") == ("sweep", 41)
    assert parent_of("sweep") is None and parent_of("sweep[01]") is None and parent_of("a[1][2]") is None


def test_a_map_node_takes_a_condition_and_the_cache():
    raw = fb.load_spec(YAML).to_dict()
    raw["nodes"][1]["when"] = "table != null"  # decided in its count task, before it expands (test_map_machine.py)
    assert fb.load_spec(raw).node("add").when == "table != null"
    raw["nodes"][1]["when"] = "a > 0"  # a condition reads upstream outs and params, not the node's own inputs
    with pytest.raises(SpecError) as caught:
        fb.load_spec(raw)
    assert [(p.code, p.where) for p in caught.value.problems] == [(ErrorCode.SPEC_CONDITION, "nodes[1].when")]
    raw["nodes"][1].pop("when")
    raw["nodes"][1]["cache"] = True  # each child is a cache node (tests/unit/test_map_cache.py)
    assert fb.load_spec(raw).node("add").cache is True
