"""Artifact names that cannot leave the store's root, and the run report (no Ray)."""

from __future__ import annotations

import json

import pytest

from fabric.errors import ErrorCode, FabricError
from fabric.execute.artifacts import check_names, list_artifacts, read_artifact
from fabric.execute.outputs import write_report


@pytest.mark.parametrize("name", ["../x", "a/../../x", "/etc/passwd", "x\0y", "..", ".", "", "a//b", "a\\..\\b",
                                  ".hidden", "ok/../../fabric.db", "%2e%2e%2f"])
def test_escaping_names_are_refused_before_any_lookup(name):
    with pytest.raises(FabricError) as caught:
        check_names("sub-1", "node", name)
    assert caught.value.code == ErrorCode.SPEC_FIELD


def test_bad_ids_are_refused_and_good_names_read(tmp_path):
    for sid, node in (("../sub", "n"), ("sub-1", "../n"), ("sub-1", "a/b"), ("sub-1", "n[../x]"), ("sub-1", "n[1]/..")):
        with pytest.raises(FabricError):
            check_names(sid, node, "x.txt")
    assert check_names("sub-1", "sweep[41]", "x.txt") == ["x.txt"]  # a map's child
    files = tmp_path / "sub-1" / "n" / "files" / "sub"
    files.mkdir(parents=True)
    (files / "notes.txt").write_text("hello")
    (tmp_path / "secret.txt").write_text("not yours")
    assert read_artifact(str(tmp_path), "sub-1", "n", "sub/notes.txt") == b"hello"
    with pytest.raises(FabricError) as caught:
        read_artifact(str(tmp_path), "sub-1", "n", "missing.txt")
    assert caught.value.code == ErrorCode.NOT_FOUND
    with pytest.raises(FabricError):
        read_artifact(str(tmp_path), "sub-1", None, "secret.txt")
    assert list_artifacts(str(tmp_path), "sub-1") == {"submission_id": "sub-1", "report": False,
                                                      "nodes": {"n": ["sub/notes.txt"]}}


def test_the_run_report_gathers_node_states_and_their_metrics(tmp_path):
    node_metrics = tmp_path / "sub-2" / "fit" / "files"
    node_metrics.mkdir(parents=True)
    (node_metrics / "metrics.json").write_text(json.dumps({"sharpe": 1.5}))
    status = {"pipeline_id": "p", "state": "SUCCEEDED", "created_at": 10.0, "ended_at": 12.5,
              "counts": {"SUCCEEDED": 1, "CACHED": 1},
              "nodes": [{"node_id": "fit", "kind": "python_task", "state": "SUCCEEDED", "attempts": 1,
                         "started_at": 10.5, "ended_at": 12.0, "reason": ""},
                        {"node_id": "data", "kind": "sql", "state": "CACHED", "attempts": 0,
                         "started_at": None, "ended_at": None, "reason": "cached: reuses data of sub-1"}]}
    report = write_report(str(tmp_path), "sub-2", json.dumps(status).encode())
    assert json.loads((tmp_path / "sub-2" / "metrics.json").read_text()) == report
    assert report["wall_s"] == 2.5 and report["nodes"]["fit"] == {
        "kind": "python_task", "state": "SUCCEEDED", "attempts": 1, "seconds": 1.5, "metrics": {"sharpe": 1.5}}
    assert report["nodes"]["data"]["reused"] == "cached: reuses data of sub-1"
