"""Caching and merging on a real local Ray: CACHED re-runs, keys that cover the data, coalesced twins."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from fabric.digests import module_digest, value_digest

pytestmark = [pytest.mark.timeout(120)]


def _dag(pipeline_id: str, data_file: Path, marks: Path) -> dict[str, Any]:
    node = {"kind": "python_task", "resources": {"cpu": "250m"}}
    return {"version": 1, "pipeline_id": pipeline_id, "nodes": [
        {**node, "id": "read", "entrypoint": "tests.cache_nodes:read_text",
         "params": {"path": str(data_file), "marker_dir": str(marks)}, "outs": ["text"]},
        {**node, "id": "count", "entrypoint": "tests.cache_nodes:count_words", "cache": True,
         "params": {"marker_dir": str(marks)}, "ins": ["text"], "outs": ["counts"]},
        {**node, "id": "shout", "entrypoint": "tests.cache_nodes:shout", "cache": True, "ins": ["counts"]},
    ], "edges": [{"from": "read", "to": "count"}, {"from": "count", "to": "shout"}]}


def _runs(marks: Path, name: str) -> int:
    return len(list(marks.glob(f"{name}.*")))


@pytest.mark.ray
def test_a_rerun_reuses_cached_outputs_and_new_data_under_the_same_name_does_not(client, fabric_home, tmp_path):
    data, marks = tmp_path / "words.txt", tmp_path / "marks"
    data.write_text("alpha beta gamma")
    spec = _dag("cache_words", data, marks)
    first = client.submit(spec)
    assert first.wait(60).state == "SUCCEEDED"
    assert first.result("shout") == "ALPHA BETA GAMMA" and _runs(marks, "count") == 1

    second = client.submit(spec)
    status = second.wait(60)
    states = {n.node_id: n.state for n in status.nodes}
    assert states == {"read": "SUCCEEDED", "count": "CACHED", "shout": "CACHED"}, status
    assert _runs(marks, "read") == 2 and _runs(marks, "count") == 1  # the cached node did not run again
    assert status.node("count").reason == f"cached: reuses count of {first.id}"
    assert second.result("count", "counts")["words"] == 3 and second.result("shout") == "ALPHA BETA GAMMA"

    data.write_text("one two")  # same spec, same file name, other data: the key differs
    third = client.submit(spec)
    status = third.wait(60)
    assert {n.node_id: n.state for n in status.nodes} == {n: "SUCCEEDED" for n in ("read", "count", "shout")}
    assert third.result("shout") == "ONE TWO" and _runs(marks, "count") == 2

    # Every submission writes its report: the node states, cache reuse, and the nodes' own metrics.json.
    report_file = fabric_home / "artifacts" / second.id / "metrics.json"
    deadline = time.monotonic() + 10
    while not report_file.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    report = json.loads(report_file.read_text())
    assert report["state"] == "SUCCEEDED" and report["counts"] == {"SUCCEEDED": 1, "CACHED": 2}
    assert report["nodes"]["count"]["state"] == "CACHED" and "reused" in report["nodes"]["count"]
    first_report = json.loads((fabric_home / "artifacts" / first.id / "metrics.json").read_text())
    assert first_report["nodes"]["count"]["metrics"] == {"words": 3}
    assert (fabric_home / "artifacts" / first.id / "count" / "files" / "metrics.json").exists()
    copied = fabric_home / "artifacts" / second.id / "count" / "files" / "metrics.json"  # a CACHED node's files
    while not copied.exists() and time.monotonic() < deadline + 10:
        time.sleep(0.1)
    assert json.loads(copied.read_text()) == {"words": 3}


@pytest.mark.ray
def test_identical_nodes_running_at_once_are_coalesced_into_one_execution(client, tmp_path):
    marks = tmp_path / "marks"
    spec = {"version": 1, "pipeline_id": "cache_coalesce", "nodes": [
        {"id": "slow", "kind": "python_task", "entrypoint": "tests.cache_nodes:slow_double", "cache": True,
         "resources": {"cpu": "250m"}, "params": {"x": 21, "seconds": 2.0, "marker_dir": str(marks)}}]}
    one, two = client.submit(spec), client.submit(spec)
    statuses = [one.wait(60), two.wait(60)]
    assert [s.state for s in statuses] == ["SUCCEEDED", "SUCCEEDED"]
    assert sorted(s.node("slow").state for s in statuses) == ["CACHED", "SUCCEEDED"]
    assert _runs(marks, "slow") == 1  # one execution for both
    assert one.result("slow") == two.result("slow") == 42


def test_digests_cover_the_data_not_the_name(tmp_path):
    table = pa.table({"x": [1, 2, 3]})
    assert value_digest(table) == value_digest(pa.table({"x": [1, 2, 3]}))
    assert value_digest(table) != value_digest(pa.table({"x": [1, 2, 4]}))
    path = tmp_path / "data.bin"
    path.write_bytes(b"first")
    before = value_digest(str(path))
    path.write_bytes(b"other")
    assert value_digest(str(path)) != before and value_digest("not a path") == value_digest("not a path")
    assert value_digest({"a": 1}) != value_digest({"a": 2})


def test_code_version_follows_the_module_source(tmp_path, monkeypatch):
    module = tmp_path / "cache_mod_version.py"
    module.write_text("def f():\n    return 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    first = module_digest("cache_mod_version")
    module.write_text("def f():\n    return 2\n")
    assert module_digest("cache_mod_version") != first != "?"
    assert module_digest("no_such_module_anywhere") == "?"
    sys.modules.pop("cache_mod_version", None)


def _machine(gated: bool):
    from fabric.plan import compile_plan
    from fabric.schedule import RunMachine
    from fabric.spec import load_spec

    spec = load_spec({"version": 1, "pipeline_id": "m", "nodes": [
        {"id": "a", "kind": "python_task", "entrypoint": "m:a", "outs": ["x"], "cache": True},
        {"id": "b", "kind": "python_task", "entrypoint": "m:b", "ins": ["x"]}], "edges": [{"from": "a", "to": "b"}]})
    plan = compile_plan(spec)
    assert plan.nodes["a"].digest_outputs and not plan.nodes["b"].digest_outputs
    assert plan.persisted_outs(False) == {"a": ("x",), "b": ()}
    return RunMachine(plan, time.time, submission_id="s", gated=gated)


@pytest.mark.parametrize("gated", [False, True])
def test_a_cache_node_waits_for_its_check_then_a_hit_releases_its_consumers(gated):
    machine = _machine(gated)
    assert machine.start() == []  # neither a, nor b wired to it, is dispatched before the cache decides
    assert machine.ready_cached() == ["a"] and machine.nodes["a"].state == "QUEUED"
    machine.hold("a", "coalesced")
    assert machine.waiting() == [] and machine.nodes["a"].reason == "coalesced"  # admission cannot see it
    actions = machine.cache_hit("a", "cached: reuses a of s0")
    assert machine.nodes["a"].state == "CACHED" and machine.nodes["a"].token is not None
    assert [a.node_id for a in actions] == ([] if gated else ["b"])
    assert machine.nodes["b"].state == ("QUEUED" if gated else "RUNNING")
    assert machine.cache_hit("a", "again") == []  # only a waiting node can hit


def _map_dag(values: list[int], marks: Path) -> dict[str, Any]:
    node = {"kind": "python_task", "resources": {"cpu": "250m"}}
    return {"version": 1, "pipeline_id": "cache_map", "nodes": [
        {**node, "id": "items", "entrypoint": "tests.cache_nodes:listed", "params": {"values": values, "offset": 100},
         "outs": ["values", "offset"]},
        {**node, "id": "square", "entrypoint": "tests.cache_nodes:square_item", "cache": True,
         "ins": ["item=values", "offset"], "params": {"marker_dir": str(marks)}, "outs": ["squares"],
         "map": {"over": "item"}},
        {**node, "id": "total", "entrypoint": "tests.cache_nodes:collect", "ins": ["squares"]},
    ], "edges": [{"from": "items", "to": "square"}, {"from": "square", "to": "total"}]}


@pytest.mark.ray
@pytest.mark.timeout(240)
def test_a_cached_map_runs_only_the_children_whose_items_changed(client, tmp_path):
    marks = tmp_path / "marks"
    values = list(range(12))
    first = client.submit(_map_dag(values, marks))
    assert first.wait(120).state == "SUCCEEDED"
    assert _runs(marks, "square*") == 12
    assert first.result("total") == [v * v + 100 for v in values]

    changed = [0, 1, 2, 103, 4, 5, 106, 7, 8, 9, 110, 11]  # the nightly refresh: 3 of 12 items changed
    second = client.submit(_map_dag(changed, marks))
    status = second.wait(120)
    assert status.state == "SUCCEEDED", status
    assert _runs(marks, "square*") == 15  # exactly 3 more executions: the changed items'
    assert [_runs(marks, f"square{v}") for v in (103, 106, 110)] == [1, 1, 1]
    children = {n.node_id: n for n in status.nodes if n.node_id.startswith("square[")}
    assert sorted(children) == sorted(f"square[{i}]" for i in range(12))
    ran = {i for i in range(12) if children[f"square[{i}]"].state == "SUCCEEDED"}
    assert ran == {3, 6, 10}
    for i in set(range(12)) - ran:
        assert children[f"square[{i}]"].state == "CACHED"
        assert children[f"square[{i}]"].reason == f"cached: reuses square[{i}] of {first.id}"
    assert second.result("total") == [v * v + 100 for v in changed]  # every value, in item order
