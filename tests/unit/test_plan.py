"""compile_plan: merge rules, wiring, Ray units and content hashes (pure, no Ray)."""

from __future__ import annotations

import pytest

from fabric.errors import ErrorCode, SpecError
from fabric.kinds import kind_checks
from fabric.plan import compile_plan
from fabric.spec import load_spec, parse_runtime_params

pytestmark = pytest.mark.timeout(30)


def spec(**overrides):
    base = {
        "version": 1, "pipeline_id": "p",
        "slo": {"max_runtime": "1h", "retry": {"max_attempts": 3, "backoff_sec": 10}, "priority": "low"},
        "resources": {"default": {"cpu": "500m", "mem": "1Gi"}},
        "nodes": [
            {"id": "a", "kind": "python_task", "entrypoint": "m:a", "outs": ["x"], "params": {"k": 1}},
            {"id": "b", "kind": "python_task", "entrypoint": "m:b", "ins": ["y=x"],
             "slo": {"retry": {"max_attempts": 5}, "max_runtime": "30s"},
             "resources": {"gpu": 0.25, "gpu_mem": "8Gi", "custom": {"A100": 1}}},
        ],
        "edges": [{"from": "a", "to": "b"}, {"from": "a", "to": "b"}],
    }
    base.update(overrides)
    return load_spec(base)


def test_slo_and_resources_merge_field_by_field():
    plan = compile_plan(spec())
    a, b = plan.nodes["a"], plan.nodes["b"]
    assert (a.retry.max_attempts, a.retry.backoff_sec) == (3, 10)
    assert (b.retry.max_attempts, b.retry.backoff_sec) == (5, 10)  # keeps the DAG's backoff
    assert a.max_runtime is None and b.max_runtime == 30  # the DAG's max_runtime bounds the DAG only
    assert plan.max_runtime == 3600
    assert (a.unit.num_cpus, a.unit.num_gpus, a.unit.memory) == (0.5, 0.0, 2**30)
    assert (b.unit.num_cpus, b.unit.num_gpus, b.unit.memory) == (0.5, 0.25, 2**30)
    assert b.unit.custom == {"A100": 1, "gpu_mem_gb": 8.0}
    assert a.priority == "low"
    assert compile_plan(spec(), parse_runtime_params({"priority": "high"})).nodes["a"].priority == "high"


def test_wiring_and_edges():
    plan = compile_plan(spec())
    [wire] = plan.nodes["b"].inputs
    assert (wire.name, wire.producer, wire.out) == ("y", "a", "x")
    assert plan.nodes["b"].upstream == ("a",)  # the repeated edge is one dependency
    assert plan.order == ("a", "b") and plan.sinks == ("b",)
    assert plan.nodes["a"].result_slots == ("x",) and plan.nodes["b"].result_slots == ("result",)


def test_content_hash_follows_params_and_upstream_data():
    base = compile_plan(spec())
    changed = spec(nodes=[{"id": "a", "kind": "python_task", "entrypoint": "m:a", "outs": ["x"], "params": {"k": 2}},
                          {"id": "b", "kind": "python_task", "entrypoint": "m:b", "ins": ["y=x"]}])
    other = compile_plan(changed)
    assert other.nodes["a"].content_hash != base.nodes["a"].content_hash
    assert other.nodes["b"].content_hash != base.nodes["b"].content_hash  # b's own fields equal, input not
    assert compile_plan(spec()).plan_hash == base.plan_hash  # deterministic


def test_kinds_are_checked_at_submit_time_with_every_problem():
    bad = load_spec({"version": 1, "pipeline_id": "k", "nodes": [
        {"id": "t", "kind": "trino_sql"},
        {"id": "p", "kind": "python_task"},
        {"id": "q", "kind": "sql", "params": {"query": " "}}]})
    with pytest.raises(SpecError) as caught:
        compile_plan(bad, None, kind_checks())
    codes = [(p.code, p.where) for p in caught.value.problems]
    assert (ErrorCode.KIND_NOT_RUNNABLE, "nodes[0].kind") in codes
    assert (ErrorCode.KIND_PARAMS, "nodes[1].entrypoint") in codes
    assert (ErrorCode.KIND_PARAMS, "nodes[2].params.query") in codes


def test_node_env_cannot_set_ray_variables():
    with pytest.raises(SpecError) as caught:
        spec(nodes=[{"id": "a", "kind": "python_task", "entrypoint": "m:a", "env": {"RAY_ADDRESS": "x"}}], edges=[])
    assert "RAY_" in str(caught.value)


def test_a_pool_becomes_a_sliver_of_its_ray_custom_resource():
    from fabric.plan.compile import POOL_SHARE

    spec = load_spec({"version": 1, "pipeline_id": "pools", "nodes": [
        {"id": "a", "kind": "python_task", "entrypoint": "m:f", "pool": "gpu-spot", "resources": {"gpu": 1}},
        {"id": "b", "kind": "python_task", "entrypoint": "m:f"}]})
    plan = compile_plan(spec, parse_runtime_params({"affinity": {"compute_pool": "cpu"}}))
    assert plan.nodes["a"].unit.custom == {"pool:gpu-spot": POOL_SHARE} and plan.nodes["a"].unit.num_gpus == 1
    assert plan.nodes["b"].unit.custom == {"pool:cpu": POOL_SHARE}  # the submission's affinity, where unset
