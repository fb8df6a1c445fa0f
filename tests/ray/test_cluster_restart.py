"""Recovery across a whole Ray cluster stopping mid-DAG: a new cluster on the same FABRIC_HOME finishes it."""

from __future__ import annotations

import os
import time

import pytest
import ray

import fabric as fb
from tests.conftest import REPO
from tests.ray.test_registry_restart import runs, three_step

pytestmark = [pytest.mark.ray, pytest.mark.timeout(150)]


def test_the_dag_finishes_on_a_new_cluster_and_succeeded_nodes_do_not_rerun(tmp_path):
    os.chdir(REPO)
    home, markers = tmp_path / "home", tmp_path / "markers"
    client = fb.connect("local", num_cpus=2, home=str(home))
    try:
        submission = client.submit(three_step(str(markers)), {"submission_id": "survivor-001"})
        deadline = time.monotonic() + 30
        while submission.status().node("b").state != "RUNNING" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert submission.status().node("a").state == "SUCCEEDED"
    finally:
        ray.shutdown()  # the whole local cluster goes: registry, workers, object store
    stopped_at = time.time()

    client = fb.connect("local", num_cpus=2, home=str(home))  # a new cluster, the same FABRIC_HOME
    try:
        status = client.get("survivor-001").wait(60)
        assert status.state == "SUCCEEDED", [(n.node_id, n.state, n.error) for n in status.nodes]
        assert runs(markers, "a") == 1 and runs(markers, "c") == 1
        assert client.get("survivor-001").result("c") == "c(a(),b(a()))"
        from tests.reliability.results import record

        record("fault", "whole Ray cluster stopped and started", recovered_s=round(status.ended_at - stopped_at, 2),
               reruns_of_succeeded_nodes=0, outcome="a new cluster on the same FABRIC_HOME finished the DAG")
    finally:
        ray.shutdown()
