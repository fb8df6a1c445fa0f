"""FABRIC_ARTIFACTS=s3://… on a real local Ray against a real S3-protocol server on loopback (moto): node files
and the run report read back through the client, and a registry restart that resumes from outputs in S3."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.ray.test_engine import dag, py
from tests.ray.test_registry_restart import _restart_registry, runs, three_step
from tests.s3_server import BUCKET, keys, moto_server, s3_env

pytestmark = [pytest.mark.ray, pytest.mark.timeout(120)]
PREFIX = "ray-tier"


@pytest.fixture(scope="module")
def endpoint() -> Iterator[str]:
    with moto_server() as url:
        yield url


@pytest.fixture(scope="module")
def client(fabric_home: Path, endpoint: str) -> Iterator[object]:
    """A Client on a fresh local Ray whose driver, registry and workers all see the S3 settings (a local Ray
    inherits the driver's environment, as a cluster's nodes would get them from their config)."""
    import ray

    import fabric as fb

    env = {**s3_env(endpoint), "FABRIC_ARTIFACTS": f"s3://{BUCKET}/{PREFIX}"}
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    os.chdir(REPO)
    try:
        yield fb.connect("local", num_cpus=2, home=str(fabric_home))
        ray.shutdown()
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def test_node_files_and_the_report_are_in_s3_and_read_back_through_the_client(client, endpoint, fabric_home,
                                                                             tmp_path):
    submission = client.submit(dag("s3_files", [
        {"id": "count", "kind": "python_task", "entrypoint": "tests.cache_nodes:count_words",
         "params": {"text": "one two three", "marker_dir": str(tmp_path)}, "resources": {"cpu": "500m"}},
        py("note", "slow_progress", params={"steps": 1, "pause": 0.0}),
    ]))
    assert submission.wait(60).state == "SUCCEEDED"
    deadline = time.monotonic() + 20  # the report is written in the background when the run ends
    while not (listed := client.artifacts(submission.id))["report"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert listed["report"] and listed["nodes"] == {"count": ["metrics.json"], "note": ["note.txt"]}
    assert client.artifact(submission.id, "note", "note.txt") == b"written by the node"
    report = json.loads(client.artifact(submission.id, None, "metrics.json"))
    assert report["state"] == "SUCCEEDED" and report["nodes"]["count"]["metrics"] == {"words": 3}

    stored = set(keys(endpoint, prefix=f"{PREFIX}/{submission.id}/"))
    assert {f"{PREFIX}/{submission.id}/metrics.json", f"{PREFIX}/{submission.id}/count/files/metrics.json",
            f"{PREFIX}/{submission.id}/note/files/note.txt"} <= stored
    assert not (fabric_home / "artifacts").exists(), "nothing of the artifact store may land on local disk"


def test_a_registry_restart_resumes_from_outputs_stored_in_s3(client, endpoint, fabric_home, tmp_path):
    submission = client.submit(three_step(str(tmp_path)))
    deadline = time.monotonic() + 30
    while submission.status().node("b").state != "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert submission.status().node("a").state == "SUCCEEDED"
    assert f"{PREFIX}/{submission.id}/a/outputs/outputs.pkl" in keys(endpoint, prefix=f"{PREFIX}/{submission.id}/")

    _restart_registry(client)

    status = submission.wait(60)
    assert status.state == "SUCCEEDED", [(n.node_id, n.state, n.error) for n in status.nodes]
    assert runs(tmp_path, "a") == 1, "a SUCCEEDED before the restart and must not run again"
    assert status.node("b").attempts >= 2
    assert submission.result("c") == "c(a(),b(a()))"  # c read a's output back from S3
    assert not (fabric_home / "artifacts").exists()
