"""FABRIC_ARTIFACTS=s3://… against a real S3-protocol server on loopback (moto): node outputs for resume, node
files, the run report, reading back by name, retention, all through pyarrow's S3 filesystem with the endpoint
taken from the standard AWS_ENDPOINT_URL."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator

import pyarrow as pa
import pytest

from fabric.errors import NotFoundError
from fabric.execute import outputs
from fabric.execute.artifacts import list_artifacts, read_artifact
from tests.s3_server import BUCKET, keys, moto_server, s3_env

pytestmark = pytest.mark.timeout(90)
ROOT = f"s3://{BUCKET}/unit/artifacts"


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with moto_server() as url:
        saved = {name: os.environ.get(name) for name in s3_env(url)}
        os.environ.update(s3_env(url))
        try:
            yield url
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def test_the_root_resolves_to_pyarrows_s3_filesystem_at_the_configured_endpoint(endpoint):
    from pyarrow import fs as pafs

    fs, base = outputs._fs(ROOT)
    assert isinstance(fs, pafs.S3FileSystem) and base == f"{BUCKET}/unit/artifacts"
    with fs.open_output_stream(f"{base}/probe.txt") as out:
        out.write(b"here")
    assert "unit/artifacts/probe.txt" in keys(endpoint)  # it reached the loopback server, not AWS


def test_outputs_persist_and_load_back_for_a_resume(endpoint):
    table = pa.table({"x": [1, 2, 3]})
    assert not outputs.has_outputs(ROOT, "sub-1", "a")
    outputs.persist_outputs(ROOT, "sub-1", "a", {"t": table, "n": 7})
    assert outputs.has_outputs(ROOT, "sub-1", "a")
    assert outputs.load_outputs(ROOT, "sub-1", "a", ["t", "n"]) == (table, 7)
    stored = keys(endpoint, prefix="unit/artifacts/sub-1/a/outputs/")
    assert sorted(stored) == ["unit/artifacts/sub-1/a/outputs/outputs.pkl", "unit/artifacts/sub-1/a/outputs/t.arrow"]
    outputs.save_code(ROOT, "sub-1", {"mod:f": b"pickled"})
    assert outputs.load_code(ROOT, "sub-1") == {"mod:f": b"pickled"}
    assert outputs.load_code(ROOT, "sub-none") == {}


def test_node_files_the_report_and_reading_back_by_name(endpoint, tmp_path):
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "curve.csv").write_text("day,pnl\n1,0.5\n")
    (tmp_path / "metrics.json").write_text(json.dumps({"sharpe": 1.25}))
    outputs.publish_files(ROOT, "sub-2", "report", tmp_path)
    assert outputs.copy_node_files(ROOT, ("sub-2", "report"), ("sub-3", "report")) == 2  # a CACHED node's copy

    status = {"pipeline_id": "p", "state": "SUCCEEDED", "created_at": 1.0, "ended_at": 3.5, "counts": {},
              "nodes": [{"node_id": "report", "kind": "python_task", "state": "SUCCEEDED", "attempts": 1,
                         "started_at": 2.0, "ended_at": 3.0}]}
    report = outputs.write_report(ROOT, "sub-2", json.dumps(status).encode())
    assert report["nodes"]["report"]["metrics"] == {"sharpe": 1.25}

    listed = list_artifacts(ROOT, "sub-2")
    assert listed["report"] is True and listed["nodes"] == {"report": ["metrics.json", "plots/curve.csv"]}
    assert json.loads(read_artifact(ROOT, "sub-2", None, "metrics.json"))["wall_s"] == 2.5
    assert read_artifact(ROOT, "sub-3", "report", "plots/curve.csv").startswith(b"day,pnl")
    with pytest.raises(NotFoundError):
        read_artifact(ROOT, "sub-2", "report", "missing.txt")

    assert outputs.remove_tree(ROOT, "sub-2") == 3
    assert keys(endpoint, prefix="unit/artifacts/sub-2/") == []
    assert list_artifacts(ROOT, "sub-2") == {"submission_id": "sub-2", "report": False, "nodes": {}}
