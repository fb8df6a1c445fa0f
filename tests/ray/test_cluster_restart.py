"""Recovery across a whole Ray cluster stopping mid-DAG (and mid-map): a new cluster on the same FABRIC_HOME
finishes it."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import ray

import fabric as fb
from tests.conftest import REPO
from tests.ray.test_engine import dag, py
from tests.ray.test_registry_restart import runs, three_step

pytestmark = [pytest.mark.ray, pytest.mark.timeout(150)]


def submit_then_stop_the_cluster(home: Path, spec: dict, submission_id: str,
                                 ready: Callable[[Any], bool], timeout: float) -> Any:
    """Submit on a fresh local cluster, poll its status until `ready` (or `timeout`), then stop the whole cluster
    (registry, workers mid-run, object store): the last status seen. `status` flushes the record before it
    answers, so what it shows SUCCEEDED is on disk."""
    os.chdir(REPO)
    client = fb.connect("local", num_cpus=2, home=str(home))
    try:
        submission = client.submit(spec, {"submission_id": submission_id})
        deadline = time.monotonic() + timeout
        status = submission.status()
        while not ready(status) and time.monotonic() < deadline:
            time.sleep(0.1)
            status = submission.status()
        return status
    finally:
        ray.shutdown()


def test_the_dag_finishes_on_a_new_cluster_and_succeeded_nodes_do_not_rerun(tmp_path):
    home, markers = tmp_path / "home", tmp_path / "markers"
    status = submit_then_stop_the_cluster(home, three_step(str(markers)), "survivor-001",
                                          lambda s: s.node("b").state == "RUNNING", 30)
    assert status.node("a").state == "SUCCEEDED"
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


def succeeded(status: Any) -> set[str]:
    return {n.node_id for n in status.nodes if n.state == "SUCCEEDED"}


def map_of_ten(marker_dir: str) -> dict:
    """10 children: items 0-3 quick, 4-9 slow (so the cluster can stop between them), then a reader of them all."""
    return dag("map_survivor", [
        py("xs", "int_list", params={"n": 10}, outs=["xs"]),
        py("m", "item_step", params={"marker_dir": marker_dir, "slow_from": 4, "seconds": 5}, ins=["item=xs"],
           outs=["ys"], map={"over": "item"}),
        py("after", "counted", params={"marker_dir": marker_dir, "name": "after"}, ins=["ys"]),
    ], edges=[("xs", "m"), ("m", "after")])


def test_a_map_finishes_on_a_new_cluster_and_its_succeeded_children_do_not_rerun(tmp_path):
    home, markers = tmp_path / "home", tmp_path / "markers"
    quick = {f"m[{i}]" for i in range(4)}
    status = submit_then_stop_the_cluster(home, map_of_ten(str(markers)), "map-survivor-001",
                                          lambda s: quick <= succeeded(s), 60)
    done = succeeded(status)
    assert quick <= done, done
    assert "m" not in done and "after" not in done  # the slow children were still to come
    finished = sorted(int(n[2:-1]) for n in done if n.startswith("m["))
    assert len(finished) < 10

    client = fb.connect("local", num_cpus=2, home=str(home))  # a new cluster, the same FABRIC_HOME
    try:
        submission = client.get("map-survivor-001")
        status = submission.wait(90)
        assert status.state == "SUCCEEDED", [(n.node_id, n.state, n.error) for n in status.nodes]
        children = {n.node_id: n.state for n in status.nodes if n.node_id.startswith("m[")}
        assert children == {f"m[{i}]": "SUCCEEDED" for i in range(10)}
        # One execution each for the children that had SUCCEEDED before the stop: the marker files survive it.
        again = {i: runs(markers, f"item{i}") for i in finished}
        assert again == {i: 1 for i in finished}, "SUCCEEDED children ran again"
        assert all(runs(markers, f"item{i}") >= 1 for i in range(10))
        assert runs(markers, "after") == 1
        assert submission.result("m", "ys") == [i * 10 for i in range(10)]  # item order, the first ones read back
        assert submission.result("after") == f"after({[i * 10 for i in range(10)]})"
    finally:
        ray.shutdown()
