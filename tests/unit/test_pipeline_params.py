"""Pipeline params (typed, with defaults, `{{ params.NAME }}` in node params) and edges derived from ins/outs."""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

import pytest

from fabric.errors import ErrorCode, Problem, SpecError
from fabric.execute.outputs import write_report
from fabric.kinds import kind_checks
from fabric.plan import compile_plan
from fabric.record import SubmissionRecord
from fabric.record.replay import status_from_events
from fabric.spec import load_spec, parse_runtime_params
from fabric.spec.params import ParamSpec, ParamType, ParamTypeError, coerce, substitute

pytestmark = pytest.mark.timeout(30)


def _spec(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "version": 1, "pipeline_id": "factors",
        "params": {
            "as_of": {"type": "date", "default": "2024-01-31"},
            "n_assets": {"type": "int", "default": 50},
            "scale": {"type": "float", "default": 1},
            "dry": {"type": "bool", "default": False},
            "universe": {"type": "list", "items": "string", "default": ["AAPL", "MSFT"]},
            "region": {"type": "string"},  # required
        },
        "nodes": [
            {"id": "make", "kind": "python_task", "entrypoint": "m:make", "outs": ["raw"],
             "params": {"n": "{{ params.n_assets }}", "as_of": "{{params.as_of}}", "names": "{{ params.universe }}",
                        "nested": {"label": "run {{ params.region }} at {{ params.as_of }} x{{ params.scale }}"}}},
            {"id": "clean", "kind": "sql", "ins": ["raw"], "outs": ["prices"],
             "params": {"query": "SELECT * FROM raw WHERE date <= '{{ params.as_of }}'"}},
        ],
    }
    base.update(overrides)
    return copy.deepcopy(base)


def _problems(call: Any) -> list[Problem]:
    with pytest.raises(SpecError) as info:
        call()
    return list(info.value.problems)


def _plan(given: dict[str, Any] | None = None, raw: dict[str, Any] | None = None) -> Any:
    runtime = parse_runtime_params({"params": {"region": "eu", **(given or {})}})
    return compile_plan(load_spec(raw or _spec()), runtime, kind_checks())


def test_defaults_and_given_values_are_substituted_typed() -> None:
    plan = _plan({"n_assets": 7, "as_of": "2024-02-29"})
    assert plan.params == {"as_of": "2024-02-29", "n_assets": 7, "scale": 1.0, "dry": False,
                           "universe": ["AAPL", "MSFT"], "region": "eu"}
    make = plan.nodes["make"].params
    assert make["n"] == 7 and isinstance(make["n"], int)  # a whole-string reference is the typed value
    assert make["names"] == ["AAPL", "MSFT"]
    assert make["nested"] == {"label": "run eu at 2024-02-29 x1.0"}  # inside a string: the value's text
    assert plan.nodes["clean"].params["query"] == "SELECT * FROM raw WHERE date <= '2024-02-29'"


def test_the_content_hash_and_so_the_cache_key_covers_resolved_values() -> None:
    one, same, other = _plan({"as_of": "2024-01-31"}), _plan(), _plan({"as_of": "2024-02-01"})
    assert one.nodes["make"].content_hash == same.nodes["make"].content_hash  # explicit default == default
    assert one.nodes["make"].content_hash != other.nodes["make"].content_hash
    assert one.nodes["clean"].content_hash != other.nodes["clean"].content_hash
    assert one.plan_hash != other.plan_hash


@pytest.mark.parametrize(("given", "code", "where"), [
    ({"n_asets": 3}, ErrorCode.PARAM_UNKNOWN, "runtime_params.params.n_asets"),
    ({"n_assets": "3"}, ErrorCode.PARAM_TYPE, "runtime_params.params.n_assets"),
    ({"n_assets": True}, ErrorCode.PARAM_TYPE, "runtime_params.params.n_assets"),
    ({"n_assets": 2.5}, ErrorCode.PARAM_TYPE, "runtime_params.params.n_assets"),
    ({"as_of": "2024-02-30"}, ErrorCode.PARAM_TYPE, "runtime_params.params.as_of"),
    ({"as_of": "yesterday"}, ErrorCode.PARAM_TYPE, "runtime_params.params.as_of"),
    ({"dry": "false"}, ErrorCode.PARAM_TYPE, "runtime_params.params.dry"),
    ({"universe": ["AAPL", 3]}, ErrorCode.PARAM_TYPE, "runtime_params.params.universe"),
    ({"scale": float("nan")}, ErrorCode.PARAM_TYPE, "runtime_params.params.scale"),
])
def test_bad_values_name_the_param(given: dict[str, Any], code: ErrorCode, where: str) -> None:
    problems = _problems(lambda: _plan(given))
    assert [(p.code, p.where) for p in problems] == [(code, where)]
    name = where.rsplit(".", 1)[1]
    assert name in problems[0].message


def test_a_required_param_not_given_and_every_problem_at_once() -> None:
    runtime = parse_runtime_params({"params": {"ghost": 1, "dry": 0}})
    problems = _problems(lambda: compile_plan(load_spec(_spec()), runtime))
    assert {(p.code, p.where) for p in problems} == {
        (ErrorCode.PARAM_UNKNOWN, "runtime_params.params.ghost"),
        (ErrorCode.PARAM_TYPE, "runtime_params.params.dry"),
        (ErrorCode.PARAM_REQUIRED, "runtime_params.params.region")}


def test_a_reference_to_an_undeclared_param_is_a_spec_problem() -> None:
    raw = _spec()
    raw["nodes"][1]["params"]["query"] = "SELECT * FROM raw WHERE d <= '{{ params.asof }}'"
    problems = _problems(lambda: load_spec(raw))
    assert [(p.code, p.where) for p in problems] == [(ErrorCode.PARAM_UNKNOWN, "nodes[1].params.query")]
    assert "'asof'" in problems[0].message and "as_of" in problems[0].fix


@pytest.mark.parametrize(("decl", "where"), [
    ({"type": "int", "default": "3"}, "params.x"),
    ({"type": "date", "default": "2024-13-01"}, "params.x"),
    ({"type": "string", "items": "int"}, "params.x"),
    ({"type": "decimal"}, "params.x.type"),
])
def test_bad_declarations(decl: dict[str, Any], where: str) -> None:
    raw = _spec(params={"x": decl})
    for node in raw["nodes"]:
        node["params"] = {"query": "SELECT 1"} if node["kind"] == "sql" else {}
    problems = _problems(lambda: load_spec(raw))
    assert any(p.where == where for p in problems), [str(p) for p in problems]


def test_bad_param_name() -> None:
    raw = _spec(params={"bad-name": {"type": "int", "default": 1}})
    raw["nodes"][0]["params"] = {}
    raw["nodes"][1]["params"] = {"query": "SELECT 1"}
    assert any(p.where.startswith("params") for p in _problems(lambda: load_spec(raw)))


def test_coerce_rules() -> None:
    assert coerce(ParamType.FLOAT, 3) == 3.0 and isinstance(coerce(ParamType.FLOAT, 3), float)
    assert coerce(ParamType.DATE, dt.date(2024, 1, 2)) == "2024-01-02"
    assert coerce(ParamType.LIST, (1, "a")) == [1, "a"]
    with pytest.raises(ParamTypeError):
        coerce(ParamType.DATE, dt.datetime(2024, 1, 2, 3))
    with pytest.raises(ParamTypeError):
        coerce(ParamType.LIST, [{"a": 1}])
    assert ParamSpec(type=ParamType.STRING).required and not ParamSpec(type=ParamType.STRING, default="").required
    # Literal braces that are not a reference stay; an unknown name is left as written.
    assert substitute({"a": "{{ not_a_param }}", "b": ["{{ params.z }}"]}, {"y": 1}) == \
        {"a": "{{ not_a_param }}", "b": ["{{ params.z }}"]}


def test_status_and_report_record_resolved_values(tmp_path: Any) -> None:
    plan = _plan({"n_assets": 9})
    record = SubmissionRecord(submission_id="s1", pipeline_id="factors", spec=_spec(),
                              runtime_params={"params": dict(plan.params)}, plan_hash=plan.plan_hash,
                              request_hash="h", created_at=1.0)
    status = status_from_events(record, [])
    assert status.to_dict()["params"]["n_assets"] == 9
    import json

    report = write_report(str(tmp_path), "s1", json.dumps({**status.to_dict(), "ended_at": 2.0}).encode())
    assert report["params"] == dict(plan.params)
    # A resumed run compiles again from the recorded params: the same plan.
    again = compile_plan(load_spec(record.spec), parse_runtime_params(record.runtime_params))
    assert again.plan_hash == plan.plan_hash


# --- edges from data ---------------------------------------------------------------------------------------

def _chain(edges: list[dict[str, str]] | None = None) -> dict[str, Any]:
    raw: dict[str, Any] = {"version": 1, "pipeline_id": "p", "nodes": [
        {"id": "c", "kind": "python_task", "ins": ["y", "first=x"]},
        {"id": "a", "kind": "python_task", "outs": ["x"]},
        {"id": "b", "kind": "python_task", "ins": ["x"], "outs": ["y"]},
        {"id": "solo", "kind": "python_task"},
    ]}
    if edges is not None:
        raw["edges"] = edges
    return raw


def test_omitted_edges_are_derived_from_ins_and_outs() -> None:
    spec = load_spec(_chain())
    assert [(e.from_, e.to) for e in spec.edges] == [("b", "c"), ("a", "c"), ("a", "b")]
    plan = compile_plan(spec)
    assert plan.order == ("a", "b", "c", "solo")
    assert {w.name: w.producer for w in plan.nodes["c"].inputs} == {"y": "b", "first": "a"}
    assert load_spec(spec.to_dict()) == spec  # the derived edges are written out and read back the same


def test_given_edges_must_include_every_data_dependency() -> None:
    problems = _problems(lambda: load_spec(_chain([{"from": "a", "to": "b"}])))
    assert {p.where for p in problems} == {"nodes[c].ins[0]", "nodes[c].ins[1]"}
    assert all("edges are given" in p.message and "omit edges" in p.fix for p in problems)
    # Transitive dependencies and extra ordering edges agree with the data.
    spec = load_spec(_chain([{"from": "a", "to": "b"}, {"from": "b", "to": "c"}, {"from": "solo", "to": "a"}]))
    assert compile_plan(spec).order == ("solo", "a", "b", "c")


def test_derived_edges_report_ambiguity_and_cycles() -> None:
    raw = _chain()
    raw["nodes"][3]["outs"] = ["x"]  # solo also produces x: c and b cannot tell which one they read
    problems = _problems(lambda: load_spec(raw))
    assert {(p.code, p.where) for p in problems} == {(ErrorCode.SPEC_UNWIRED_INPUT, "nodes[b].ins[0]"),
                                                     (ErrorCode.SPEC_UNWIRED_INPUT, "nodes[c].ins[1]")}
    assert "several nodes" in problems[0].message
    cyclic = {"version": 1, "pipeline_id": "p", "nodes": [
        {"id": "a", "kind": "python_task", "ins": ["y"], "outs": ["x"]},
        {"id": "b", "kind": "python_task", "ins": ["x"], "outs": ["y"]}]}
    problems = _problems(lambda: load_spec(cyclic))
    assert problems[0].code == ErrorCode.SPEC_CYCLE and problems[0].where.startswith("nodes[")
    assert "derived" in problems[0].fix
