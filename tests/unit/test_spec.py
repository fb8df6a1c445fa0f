"""Tests of the DAG spec v1 contract: models, loading, graph validation, YAML safety and JSON Schema."""

from __future__ import annotations

import copy
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from fabric.errors import ErrorCode, Problem, SpecError
from fabric.spec import (
    KNOWN_KINDS,
    DagSpec,
    Edge,
    Priority,
    RuntimeParams,
    dag_json_schema,
    graph_problems,
    load_spec,
    parse_runtime_params,
    runtime_params_json_schema,
    topological_order,
)

DESIGN_EXAMPLE = Path(__file__).parents[1] / "data" / "design_example.yaml"


def _base() -> dict[str, Any]:
    return copy.deepcopy({
        "version": 1,
        "pipeline_id": "p1",
        "nodes": [
            {"id": "a", "kind": "python_task", "outs": ["x"]},
            {"id": "b", "kind": "python_task", "ins": ["x"], "outs": ["y"]},
            {"id": "c", "kind": "python_task", "ins": ["y"]},
        ],
        "edges": [{"from": "a", "to": "b"}, {"from": "b", "to": "c"}],
    })


def _problems(source: Any) -> list[Problem]:
    with pytest.raises(SpecError) as info:
        load_spec(source)
    assert info.value.code == ErrorCode.SPEC_INVALID
    return list(info.value.problems)


def _find(problems: list[Problem], code: ErrorCode, where: str | None = None) -> Problem:
    found = [p for p in problems if p.code == code and (where is None or p.where == where)]
    assert found, f"no {code} at {where!r} in {[str(p) for p in problems]}"
    return found[0]


# --- the design example ---------------------------------------------------------------------------------

def test_design_example_loads_with_normalized_values() -> None:
    spec = load_spec(DESIGN_EXAMPLE)
    assert spec.pipeline_id == "bt_xs_bilstm_v1"
    assert spec.resources is not None and spec.resources.default is not None
    assert spec.resources.default.cpu == 4.0
    assert spec.resources.default.mem == 16 * 2**30
    train = spec.node("train_model").resources
    assert train is not None
    assert (train.gpu, train.cpu, train.mem) == (1.0, 8.0, 32 * 2**30)
    assert spec.slo is not None and spec.slo.max_runtime == 7200.0
    assert spec.slo.retry is not None
    assert (spec.slo.retry.max_attempts, spec.slo.retry.backoff_sec) == (2, 60.0)
    assert spec.slo.priority is Priority.NORMAL
    assert spec.node("compute_features").env == {"FEATURE_VIEW": "xs_v2"}
    assert spec.node("train_model").params == {"trainer": "bilstm", "epochs": 30}
    assert topological_order(spec) == ["fetch_data", "compute_features", "train_model"]


def test_design_example_loads_from_every_source_form() -> None:
    text = DESIGN_EXAMPLE.read_text()
    expected = load_spec(DESIGN_EXAMPLE)
    assert load_spec(str(DESIGN_EXAMPLE)) == expected
    assert load_spec(text) == expected
    assert load_spec(yaml.safe_load(text)) == expected
    assert load_spec(expected) is expected


def test_yaml_and_json_of_the_same_spec_are_equal(tmp_path: Path) -> None:
    raw = yaml.safe_load(DESIGN_EXAMPLE.read_text())
    as_json = tmp_path / "spec.json"
    as_json.write_text(json.dumps(raw, indent=2))
    assert load_spec(as_json) == load_spec(DESIGN_EXAMPLE) == load_spec(json.dumps(raw))


def test_to_yaml_round_trip_is_equal_and_clean() -> None:
    spec = load_spec(DESIGN_EXAMPLE)
    text = spec.to_yaml()
    assert load_spec(text) == spec
    assert "null" not in text and "custom" not in text and "cache" not in text
    assert "from: fetch_data" in text
    assert spec.to_dict()["edges"][0] == {"from": "fetch_data", "to": "compute_features"}


def test_helpers_node_upstream_downstream() -> None:
    spec = load_spec(_base())
    assert spec.node("b").ins == ["x"]
    with pytest.raises(KeyError):
        spec.node("zzz")
    assert spec.upstream("c") == ["b"] and spec.upstream("a") == []
    assert spec.downstream("a") == ["b"] and spec.downstream("c") == []
    assert Priority.CRITICAL.rank > Priority.HIGH.rank > Priority.NORMAL.rank > Priority.LOW.rank


def test_topological_order_is_deterministic_by_spec_order() -> None:
    raw = {"version": 1, "pipeline_id": "p", "nodes": [
        {"id": n, "kind": "python_task"} for n in ["z", "y", "x", "w"]],
        "edges": [{"from": "x", "to": "z"}, {"from": "w", "to": "y"}]}
    assert topological_order(load_spec(raw)) == ["x", "z", "w", "y"]


def test_edge_accepts_alias_and_name_and_dumps_alias() -> None:
    assert Edge.model_validate({"from": "a", "to": "b"}) == Edge(from_="a", to="b")
    assert Edge(from_="a", to="b").model_dump(by_alias=True) == {"from": "a", "to": "b"}


def test_direct_construction_also_checks_the_graph() -> None:
    raw = _base()
    raw["edges"].append({"from": "c", "to": "a"})
    with pytest.raises(SpecError, match="cycle"):
        DagSpec.model_validate(raw)


# --- all problems at once -------------------------------------------------------------------------------

def test_every_problem_is_reported_at_once() -> None:
    raw = _base()
    raw["nodes"].append({"id": "a", "kind": "python_task"})  # duplicate id: nodes[3].id
    raw["edges"].append({"from": "b", "to": "ghost"})  # dangling: edges[2].to
    raw["edges"].append({"from": "c", "to": "a"})  # cycle a -> b -> c -> a
    raw["nodes"][1]["colour"] = "red"  # unknown field
    raw["nodes"][2]["resources"] = {"cpu": "lots"}  # bad quantity
    problems = _problems(raw)
    _find(problems, ErrorCode.SPEC_DUPLICATE_ID, "nodes[3].id")
    dangling = _find(problems, ErrorCode.SPEC_DANGLING_EDGE, "edges[2].to")
    assert "ghost" in dangling.message
    cycle = _find(problems, ErrorCode.SPEC_CYCLE)
    assert "a -> b -> c -> a" in cycle.message and cycle.where == "edges[3]"
    unknown = _find(problems, ErrorCode.SPEC_UNKNOWN_FIELD, "nodes[1].colour")
    assert "allowed fields" in unknown.fix and "resources" in unknown.fix
    quantity = _find(problems, ErrorCode.SPEC_QUANTITY, "nodes[2].resources.cpu")
    assert "cannot parse 'lots'" in quantity.message and quantity.fix
    assert all(p.message and p.fix for p in problems)


def test_unknown_field_suggests_the_right_name() -> None:
    raw = _base()
    raw["nodes"][0]["resorces"] = {"cpu": 1}
    raw["edges"][0] = {"form": "a", "to": "b"}
    problems = _problems(raw)
    resorces = _find(problems, ErrorCode.SPEC_UNKNOWN_FIELD, "nodes[0].resorces")
    assert "did you mean 'resources'?" in resorces.fix
    assert "did you mean 'from'?" in _find(problems, ErrorCode.SPEC_UNKNOWN_FIELD, "edges[0].form").fix


def test_unknown_kind_suggests_a_known_kind() -> None:
    raw = _base()
    raw["nodes"][0]["kind"] = "pyton_task"
    problem = _find(_problems(raw), ErrorCode.SPEC_UNKNOWN_KIND, "nodes[0].kind")
    assert "did you mean 'python_task'?" in problem.message
    assert "known kinds:" in problem.fix and "trino_sql" in problem.fix and "did you mean" in problem.fix
    assert len(KNOWN_KINDS) == 19  # with `pipeline` (fabric/spec/subdags.py) and the six genai kinds


def test_self_edge_and_dangling_from_with_suggestion() -> None:
    raw = _base()
    raw["edges"] += [{"from": "b", "to": "b"}, {"from": "aa", "to": "c"}]
    problems = _problems(raw)
    assert "itself" in _find(problems, ErrorCode.SPEC_CYCLE, "edges[2]").message
    assert "did you mean 'a'?" in _find(problems, ErrorCode.SPEC_DANGLING_EDGE, "edges[3].from").fix


def test_each_distinct_cycle_is_reported() -> None:
    raw = {"version": 1, "pipeline_id": "p", "nodes": [{"id": n, "kind": "sql"} for n in "abcde"],
           "edges": [{"from": "a", "to": "b"}, {"from": "b", "to": "a"},
                     {"from": "c", "to": "d"}, {"from": "d", "to": "e"}, {"from": "e", "to": "c"}]}
    cycles = sorted(p.message for p in _problems(raw) if p.code == ErrorCode.SPEC_CYCLE)
    assert cycles == ["cycle: a -> b -> a", "cycle: c -> d -> e -> c"]


def test_input_not_produced_by_any_node() -> None:
    raw = _base()
    raw["nodes"][2]["ins"] = ["yy"]
    problem = _find(_problems(raw), ErrorCode.SPEC_UNWIRED_INPUT, "nodes[c].ins[0]")
    assert "not produced" in problem.message and "did you mean 'y'?" in problem.fix


def test_input_whose_producer_is_not_an_ancestor() -> None:
    raw = _base()
    raw["edges"] = [{"from": "a", "to": "b"}]  # c needs y from b but has no edge
    problem = _find(_problems(raw), ErrorCode.SPEC_UNWIRED_INPUT, "nodes[c].ins[0]")
    assert "not upstream" in problem.message
    assert problem.fix.startswith("add edge {from: b, to: c}")


def test_transitive_ancestor_counts_as_producer() -> None:
    raw = _base()
    raw["nodes"][2]["ins"] = ["x", "y"]  # x comes from a, two hops up
    assert load_spec(raw).node("c").ins == ["x", "y"]


def test_ambiguous_input_with_two_upstream_producers() -> None:
    raw = _base()
    raw["nodes"][1]["outs"] = ["y", "x"]  # now a and b both produce x, and both are upstream of c
    raw["nodes"][2]["ins"] = ["x"]
    problem = _find(_problems(raw), ErrorCode.SPEC_UNWIRED_INPUT, "nodes[c].ins[0]")
    assert "ambiguous" in problem.message and "a, b" in problem.message


def test_same_out_name_in_parallel_branches_is_allowed() -> None:
    raw = {"version": 1, "pipeline_id": "p", "nodes": [
        {"id": "l1", "kind": "sql", "outs": ["t"]}, {"id": "l2", "kind": "sql", "ins": ["t"]},
        {"id": "r1", "kind": "sql", "outs": ["t"]}, {"id": "r2", "kind": "sql", "ins": ["t"]}],
        "edges": [{"from": "l1", "to": "l2"}, {"from": "r1", "to": "r2"}]}
    assert graph_problems(raw) == []
    load_spec(raw)


def test_graph_problems_tolerates_garbage() -> None:
    garbage = {"nodes": [None, 3, {"id": 5}, {"id": "a", "ins": [1, "q"], "outs": "x"}],
               "edges": [None, {"from": 1}]}
    codes = [p.code for p in graph_problems(garbage)]
    assert codes == [ErrorCode.SPEC_UNWIRED_INPUT]
    assert graph_problems({"nodes": "no"}) == []


@pytest.mark.parametrize(("patch", "where", "fragment"), [
    ({"version": 2}, "version", "1"),
    ({"pipeline_id": "9bad"}, "pipeline_id", "not a valid pipeline id"),
    ({"nodes": []}, "nodes", "at least 1"),
])
def test_top_level_field_errors(patch: dict[str, Any], where: str, fragment: str) -> None:
    raw = {**_base(), **patch}
    problem = _find(_problems(raw), ErrorCode.SPEC_FIELD, where)
    assert fragment in problem.message + problem.fix


@pytest.mark.parametrize(("node_patch", "where", "fragment"), [
    ({"id": "bad id"}, "nodes[0].id", "not a valid node id"),
    ({"outs": ["class"]}, "nodes[0].outs[0]", "Python keyword"),
    ({"outs": ["x", "x"]}, "nodes[0].outs", "listed twice"),
    ({"outs": ["x", "1x"]}, "nodes[0].outs[1]", "keyword argument"),
    ({"env": {"1BAD": "v"}}, "nodes[0].env", "not a valid environment variable name"),
    ({"env": {"N": 5}}, "nodes[0].env.N", "string"),
    ({"entrypoint": "just_a_function"}, "nodes[0].entrypoint", "package.module:function"),
    ({"resources": {"custom": {"acc": -1}}}, "nodes[0].resources.custom", ">= 0"),
    ({"resources": {"workers": 0}}, "nodes[0].resources.workers", ">= 1"),
    ({"slo": {"retry": {"max_attempts": 0}}}, "nodes[0].slo.retry.max_attempts", ">= 1"),
    ({"slo": {"retry": {"backoff_factor": 0.5}}}, "nodes[0].slo.retry.backoff_factor", ">= 1"),
    ({"slo": {"priority": "urgent"}}, "nodes[0].slo.priority", "critical"),
])
def test_node_field_errors(node_patch: dict[str, Any], where: str, fragment: str) -> None:
    raw = _base()
    raw["nodes"][0].update(node_patch)
    problem = next((p for p in _problems(raw) if p.where == where), None)
    assert problem is not None, where
    assert fragment in problem.message + " " + problem.fix


def test_entrypoint_and_custom_resources_accepted() -> None:
    raw = _base()
    raw["nodes"][0].update({"entrypoint": "my_pkg.features:compute", "pool": "gpu_spot", "cache": True,
                            "resources": {"custom": {"accelerator_type:H100": 1}, "gpu_mem": "40Gi"}})
    node = load_spec(raw).node("a")
    assert node.entrypoint == "my_pkg.features:compute"
    assert node.resources is not None and node.resources.gpu_mem == 40 * 2**30


# --- YAML / JSON safety ---------------------------------------------------------------------------------

_LOADERS = ["pure"] + (["libyaml"] if yaml.__with_libyaml__ else [])


@pytest.fixture(params=_LOADERS)
def yaml_loader(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Run a test on the pure-Python loader and, where available, the libyaml-backed one."""
    from fabric.spec import load as load_module

    loader = load_module._PureSpecLoader if request.param == "pure" else load_module._FastSpecLoader
    monkeypatch.setattr(load_module, "_SpecLoader", loader)
    return str(request.param)


def test_python_object_tag_is_rejected_not_executed(tmp_path: Path, yaml_loader: str) -> None:
    marker = tmp_path / "pwned"
    text = f"version: 1\npipeline_id: !!python/object/apply:os.system ['touch {marker}']\nnodes: []\n"
    problem = _problems(text)[0]
    assert problem.code == ErrorCode.SPEC_PARSE and "not allowed" in problem.message
    assert problem.where == "line 2, column 14"
    assert not marker.exists()


def test_other_explicit_tags_are_rejected(yaml_loader: str) -> None:
    assert "not allowed" in _problems("version: 1\npipeline_id: !!binary aGk=\n")[0].message
    assert "not allowed" in _problems("version: !custom 1\n")[0].message


def test_billion_laughs_is_rejected_quickly(yaml_loader: str) -> None:
    lines = ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    for prev, name in zip("abcdefgh", "bcdefghi", strict=True):
        lines.append(f"{name}: &{name} [" + ",".join(f"*{prev}" for _ in range(9)) + "]")
    start = time.perf_counter()
    problem = _problems("\n".join(lines))[0]
    assert time.perf_counter() - start < 1.0
    assert problem.code == ErrorCode.SPEC_TOO_LARGE


def test_many_aliases_are_rejected(yaml_loader: str) -> None:
    text = "x: &x 1\nitems: [" + ", ".join(["*x"] * 101) + "]\n"
    problem = _problems(text)[0]
    assert problem.code == ErrorCode.SPEC_TOO_LARGE and "aliases" in problem.message


def test_recursive_alias_is_rejected(yaml_loader: str) -> None:
    assert "refers to itself" in _problems("a: &a [*a]\n")[0].message


def test_oversized_document_is_rejected() -> None:
    text = "version: 1\ndescription: '" + "x" * (1 << 20) + "'\n"
    assert _problems(text)[0].code == ErrorCode.SPEC_TOO_LARGE


def test_too_many_nodes_is_rejected() -> None:
    raw = {"version": 1, "pipeline_id": "p", "nodes": [{"id": f"n{i}", "kind": "sql"} for i in range(10_001)]}
    problem = _problems(raw)[0]
    assert problem.code == ErrorCode.SPEC_TOO_LARGE and problem.where == "nodes"


@pytest.mark.parametrize(("text", "fragment"), [
    ("version: 1\n---\nversion: 1\n", "several YAML documents"),
    ("- 1\n- 2\n", "must be a mapping"),
    ("", "must be a mapping"),
    ("version: 1\nversion: 1\n", "duplicate key"),
])
def test_document_shape_problems(text: str, fragment: str, yaml_loader: str) -> None:
    problem = _problems(text)[0]
    assert problem.code == ErrorCode.SPEC_PARSE and fragment in problem.message


def test_yaml_syntax_error_has_line_and_column(yaml_loader: str) -> None:
    problem = _problems("version: 1\nnodes: [\n  {id: a\n")[0]
    assert problem.code == ErrorCode.SPEC_PARSE
    assert re.fullmatch(r"line \d+, column \d+", problem.where)


def test_json_syntax_error_has_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('{\n  "version": 1,\n  "nodes": [,]\n}')
    problem = _problems(path)[0]
    assert problem.code == ErrorCode.SPEC_PARSE and problem.where.endswith("line 3, column 13")


def test_missing_file_is_a_clear_problem(tmp_path: Path) -> None:
    assert "no such spec file" in _problems(str(tmp_path / "nope.yaml"))[0].message


def test_merge_keys_and_plain_dates_work(yaml_loader: str) -> None:
    text = """
version: 1
pipeline_id: p
description: 2025-10-29
resources: {default: &res {cpu: "2", mem: 1Gi}}
nodes:
  - {id: a, kind: sql, resources: {<<: *res, cpu: "4"}}
"""
    spec = load_spec(text)
    assert spec.description == "2025-10-29"
    assert spec.node("a").resources is not None
    assert (spec.node("a").resources.cpu, spec.node("a").resources.mem) == (4.0, 2**30)


# --- JSON Schema ----------------------------------------------------------------------------------------

def test_json_schema_shows_from_and_quantity_patterns() -> None:
    schema = dag_json_schema()
    assert schema["$id"].endswith("dag-spec-v1.json") and schema["title"]
    edge = schema["$defs"]["Edge"]
    assert set(edge["properties"]) == {"from", "to"} and edge["required"] == ["from", "to"]
    assert edge["additionalProperties"] is False
    resources = schema["$defs"]["Resources"]["properties"]
    patterns = {}
    for name in ("cpu", "mem", "gpu"):
        branches = [b for b in resources[name]["anyOf"] if "anyOf" in b][0]["anyOf"]
        patterns[name] = next(b["pattern"] for b in branches if b["type"] == "string")
    assert re.match(patterns["cpu"], "500m") and re.match(patterns["cpu"], "4")
    assert not re.match(patterns["cpu"], "four")
    assert re.match(patterns["mem"], "16Gi") and re.match(patterns["mem"], "1G")
    assert not re.match(patterns["mem"], "16GB")
    assert json.loads(json.dumps(schema)) == schema


def test_runtime_params_schema() -> None:
    schema = runtime_params_json_schema()
    assert schema["$id"].endswith("runtime-params-v1.json")
    assert set(schema["$defs"]["RuntimeEnvSpec"]["properties"]) == {"working_dir", "py_modules", "env_vars"}


# --- runtime params -------------------------------------------------------------------------------------

def test_design_runtime_params_example_parses() -> None:
    params = parse_runtime_params({
        "submission_id": "sub-2025-10-29-001", "env": "staging",
        "labels": {"project": "xs", "owner": "research"}, "secrets_scope": ["binance-readonly", "s3-lake-ro"],
        "priority": "high", "affinity": {"compute_pool": "gpu_spot"}, "ttl_days": 14})
    assert params.priority is Priority.HIGH and params.env == "staging"
    assert params.affinity is not None and params.affinity.compute_pool == "gpu_spot"
    assert params.ttl_days == 14 and params.secrets_scope == ["binance-readonly", "s3-lake-ro"]
    assert parse_runtime_params(None) == RuntimeParams()
    assert parse_runtime_params(params) is params


def test_ray_env_var_is_rejected() -> None:
    with pytest.raises(SpecError) as info:
        parse_runtime_params({"runtime_env": {"env_vars": {"RAY_ADDRESS": "x", "OK": "1"}}})
    problem = info.value.problems[0]
    assert problem.where == "runtime_env.env_vars" and "RAY_" in problem.message
    assert problem.code == ErrorCode.RUNTIME_PARAMS and "runtime params" in info.value.message


def test_unknown_runtime_env_key_is_rejected_by_name() -> None:
    with pytest.raises(SpecError) as info:
        parse_runtime_params({"runtime_env": {"pip": ["torch"]}, "ttl_days": 0, "env": {"A": "b"}})
    by_where = {p.where: p for p in info.value.problems}
    assert by_where["runtime_env.pip"].code == ErrorCode.SPEC_UNKNOWN_FIELD
    assert "working_dir, py_modules, env_vars" in by_where["runtime_env.pip"].fix
    assert "ttl_days" in by_where and "runtime_env.env_vars" in by_where["env"].fix


def test_bad_submission_id_and_non_mapping() -> None:
    with pytest.raises(SpecError, match="submission_id"):
        parse_runtime_params({"submission_id": "has space"})
    with pytest.raises(SpecError):
        parse_runtime_params(["not", "a", "mapping"])  # type: ignore[arg-type]
