"""Bad input without Ray: property tests on the spec parser (from the exported JSON Schema), YAML bombs
and tags, and secrets by reference (scoping, traversal). Records what it tried for docs/reliability.md."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fabric.errors import ErrorCode, FabricError, SpecError
from fabric.secrets import read_secret
from fabric.spec import dag_json_schema, load_spec, parse_runtime_params
from tests.reliability.results import record

pytestmark = pytest.mark.timeout(120)
EXAMPLES = 60
_tried = {"schema-shaped specs": 0, "arbitrary text": 0}


def _schema_shaped() -> st.SearchStrategy:
    """Specs whose keys come from the exported JSON Schema, with arbitrary JSON values. (hypothesis-jsonschema
    0.23.1 cannot draw with hypothesis 6.170: `'many' object has no attribute 'more'`; this strategy reads the
    same schema's field names instead.)"""
    schema = dag_json_schema()
    node_keys = sorted(schema["$defs"]["NodeSpec"]["properties"])
    top_keys = sorted(schema["properties"])
    json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(
        max_size=20), lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                                    max_size=3), max_leaves=8)
    node = st.fixed_dictionaries({"id": st.text(min_size=1, max_size=10), "kind": st.sampled_from(
        ["python_task", "sql", "x"])}, optional={k: json_values for k in node_keys if k not in ("id", "kind")})
    return st.fixed_dictionaries({"version": st.sampled_from([1, 2, "1"]), "pipeline_id": st.text(max_size=12),
                                  "nodes": st.lists(node, max_size=4)},
                                 optional={k: json_values for k in top_keys
                                           if k not in ("nodes", "version", "pipeline_id")})


@settings(max_examples=EXAMPLES, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large])
@given(_schema_shaped())
def test_schema_shaped_specs_load_or_fail_with_a_spec_error_only(raw):
    _tried["schema-shaped specs"] += 1
    try:
        spec = load_spec(raw)
    except SpecError as error:
        assert error.problems and all(p.where is not None for p in error.problems)
        return
    assert load_spec(spec.to_yaml()) == spec  # what loads, round-trips


@settings(max_examples=EXAMPLES, deadline=None, database=None)
@given(st.text(max_size=400) | st.binary(max_size=400))
def test_arbitrary_text_is_a_spec_error_never_a_crash(text):
    _tried["arbitrary text"] += 1
    with pytest.raises(SpecError):
        load_spec(text)


BOMB = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(8))
NASTY = {
    "YAML python tag": "!!python/object/apply:os.system ['echo pwned']",
    "YAML custom tag": "version: 1\npipeline_id: !secret x\nnodes: []\n",
    "YAML alias bomb (10^9 values)": BOMB,
    "YAML recursive alias": "a: &a [*a]\n",
    "duplicate keys": "version: 1\nversion: 2\npipeline_id: x\nnodes: []\n",
    "cycle": "version: 1\npipeline_id: c\nnodes: [{id: a, kind: sql, params: {query: 'select 1'}}, "
             "{id: b, kind: sql, params: {query: 'select 1'}}]\nedges: [{from: a, to: b}, {from: b, to: a}]\n",
    "unknown kind": {"version": 1, "pipeline_id": "x", "nodes": [{"id": "a", "kind": "quantum_annealer"}]},
    "negative cpu": {"version": 1, "pipeline_id": "x", "nodes": [
        {"id": "a", "kind": "python_task", "entrypoint": "m:f", "resources": {"cpu": "-2"}}]},
    "node id ../x": {"version": 1, "pipeline_id": "x", "nodes": [
        {"id": "../x", "kind": "python_task", "entrypoint": "m:f"}]},
    "out name with NUL": {"version": 1, "pipeline_id": "x", "nodes": [
        {"id": "a", "kind": "python_task", "entrypoint": "m:f", "outs": ["a\x00b"]}]},
    "RAY_ env var on a node": {"version": 1, "pipeline_id": "x", "nodes": [
        {"id": "a", "kind": "python_task", "entrypoint": "m:f", "env": {"RAY_ADDRESS": "x"}}]},
}
BAD_PARAMS = {
    "submission_id ../x": {"submission_id": "../x"},
    "submission_id %2e%2e%2f": {"submission_id": "%2e%2e%2f"},
    "submission_id with NUL": {"submission_id": "a\x00b"},
    "runtime_env pip (off the allowlist)": {"runtime_env": {"pip": ["requests"]}},
    "runtime_env RAY_ variable": {"runtime_env": {"env_vars": {"RAY_JOB_ID": "x"}}},
    "secrets scope a/../../x": {"secrets_scope": ["a/../../x"]},
}


@pytest.mark.parametrize("name", sorted(NASTY))
def test_nasty_specs_are_named_spec_errors(name):
    with pytest.raises(SpecError) as caught:
        load_spec(NASTY[name])
    record("bad_input", f"spec: {name}", answer=f"SpecError {caught.value.code}", layer="spec parser")


@pytest.mark.parametrize("name", sorted(BAD_PARAMS))
def test_bad_runtime_params_are_spec_errors(name):
    with pytest.raises(SpecError) as caught:
        parse_runtime_params(BAD_PARAMS[name])
    record("bad_input", f"runtime params: {name}", answer=f"SpecError {caught.value.code}", layer="spec parser")


def test_secrets_are_read_by_reference_only_for_listed_scopes(tmp_path):
    (tmp_path / "lake").mkdir()
    (tmp_path / "lake" / "key").write_text("s3cr3t\n")
    assert read_secret(tmp_path, "lake", "key", ("lake",)) == "s3cr3t"
    for scope, key, allowed, code in [("lake", "key", (), ErrorCode.FORBIDDEN),
                                      ("lake", "../lake/key", ("lake",), ErrorCode.SPEC_FIELD),
                                      ("a/../lake", "key", ("a/../lake",), ErrorCode.SPEC_FIELD),
                                      ("lake", "missing", ("lake",), ErrorCode.NOT_FOUND)]:
        with pytest.raises(FabricError) as caught:
            read_secret(tmp_path, scope, key, allowed)
        assert caught.value.code == code and "s3cr3t" not in str(caught.value)


@pytest.fixture(scope="module", autouse=True)
def _record_the_property_runs():
    """At the module's teardown, whatever order the tests ran in: what the properties tried."""
    yield
    record("property", "spec parser (hypothesis; keys from the exported JSON Schema)", examples_per_property=EXAMPLES,
           schema_shaped_specs=_tried["schema-shaped specs"], arbitrary_texts=_tried["arbitrary text"],
           outcome="every input loaded (and round-tripped) or raised SpecError naming where; nothing else")
