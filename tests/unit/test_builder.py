"""`@fb.task` in Python builds the same spec as YAML (round trip), without Ray."""

from __future__ import annotations

import pytest

import fabric as fb
from fabric.errors import FabricError
from tests import nodes

pytestmark = pytest.mark.timeout(30)

make_table = fb.task(nodes.make_table, outs=["table"], cpu="500m")
table_sum = fb.task(nodes.table_sum, max_runtime="90s", max_attempts=3, backoff_sec=5)
split = fb.task(nodes.split, outs=["low", "high"], gpu=0.25, mem="512Mi")
add = fb.task(nodes.add, env={"FEATURE_VIEW": "xs_v2"})

YAML = """
version: 1
pipeline_id: built
nodes:
  - {id: make_table, kind: python_task, entrypoint: "tests.nodes:make_table", params: {rows: 10},
     outs: [table], resources: {cpu: "500m"}}
  - {id: table_sum, kind: python_task, entrypoint: "tests.nodes:table_sum", ins: [table], outs: [table_sum],
     slo: {max_runtime: "90s", retry: {max_attempts: 3, backoff_sec: 5}}}
  - {id: split, kind: python_task, entrypoint: "tests.nodes:split", ins: ["x=table_sum"], outs: [low, high],
     resources: {gpu: 0.25, mem: "512Mi"}}
  - {id: add, kind: python_task, entrypoint: "tests.nodes:add", ins: ["a=low", "b=high"], outs: [add],
     env: {FEATURE_VIEW: xs_v2}}
edges:
  - {from: make_table, to: table_sum}
  - {from: table_sum, to: split}
  - {from: split, to: add}
"""


def build() -> fb.DAG:
    with fb.DAG("built") as dag:
        table = make_table(rows=10)
        total = table_sum(table)
        parts = split(total)
        add(parts["low"], parts.high)
    return dag


def test_builder_and_yaml_give_the_same_spec():
    built = build()
    assert built.to_spec() == fb.load_spec(YAML)
    assert fb.load_spec(built.to_yaml()) == built.to_spec()
    assert built.inline_code() == {}  # importable functions travel by name, not by value


def test_tasks_are_plain_functions_outside_a_dag():
    assert add(1.0, 2.0) == 3.0
    assert split(3.0) == {"low": 2.0, "high": 4.0}


def test_a_parameter_a_spec_cannot_hold_is_a_clear_error():
    with fb.DAG("bad"), pytest.raises(FabricError) as caught:
        add(object(), 1.0)
    assert caught.value.where == "add.params.a"


def test_same_task_twice_gets_distinct_ids():
    with fb.DAG("twice") as dag:
        add(1.0, 2.0)
        add(3.0, 4.0)
        add.with_options(id="third")(5.0, 6.0)
    assert [n.id for n in dag.to_spec().nodes] == ["add", "add_2", "third"]
