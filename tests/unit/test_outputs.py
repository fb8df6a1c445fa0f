"""Persisted node outputs round-trip through the artifact store (local dir; pyarrow.fs for URIs)."""

from __future__ import annotations

import pyarrow as pa
import pytest

from fabric.execute.outputs import has_outputs, load_outputs, persist_outputs

pytestmark = pytest.mark.timeout(30)


def test_tables_and_values_round_trip(tmp_path):
    table = pa.table({"x": [1, 2, 3]})
    root = str(tmp_path / "artifacts")
    assert not has_outputs(root, "s1", "n")
    persist_outputs(root, "s1", "n", {"table": table, "model": {"coef": [0.5]}, "nothing": None})
    assert has_outputs(root, "s1", "n")
    loaded_table, model, nothing = load_outputs(root, "s1", "n", ["table", "model", "nothing"])
    assert loaded_table.equals(table) and model == {"coef": [0.5]} and nothing is None
    assert load_outputs(root, "s1", "n", ["model"]) == {"coef": [0.5]}
    assert (tmp_path / "artifacts/s1/n/outputs/table.arrow").exists()


def test_a_uri_root_works_through_pyarrow_fs(tmp_path):
    root = f"file://{tmp_path}/uri-root"
    persist_outputs(root, "s2", "n", {"v": 42, "fn": lambda x: x + 1})  # a lambda needs cloudpickle
    value, fn = load_outputs(root, "s2", "n", ["v", "fn"])
    assert value == 42 and fn(1) == 2


def test_a_run_read_right_after_it_ended_finds_its_report(tmp_path, monkeypatch):
    """The report is written in the background; a listing or a read of it waits for that write (bounded)."""
    import json
    import time

    from fabric.execute import outputs
    from fabric.execute.artifacts import list_artifacts, read_artifact

    real = outputs.write_report

    def slow(root, submission_id, status_json):
        time.sleep(0.5)
        return real(root, submission_id, status_json)

    monkeypatch.setattr(outputs, "write_report", slow)
    status = {"pipeline_id": "p", "state": "SUCCEEDED", "created_at": 1.0, "ended_at": 2.0, "counts": {},
              "nodes": []}
    root = str(tmp_path)
    outputs.start_report(root, "sub-1", json.dumps(status).encode())
    assert list_artifacts(root, "sub-1")["report"] is True
    outputs.start_report(root, "sub-2", json.dumps(status).encode())
    assert json.loads(read_artifact(root, "sub-2", None, "metrics.json"))["state"] == "SUCCEEDED"
