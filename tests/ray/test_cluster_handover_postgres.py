"""Hand-over on PostgreSQL: a DAG started on one Ray cluster finishes on a second one, one after the other, that
shares only the PostgreSQL store and the artifact store (a fresh FABRIC_HOME, as a new cluster's disk would be);
no node that SUCCEEDED runs again."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pytest
import ray

import fabric as fb
from tests.conftest import REPO
from tests.ray.test_registry_restart import runs, three_step

pytestmark = [pytest.mark.ray, pytest.mark.timeout(150)]


@pytest.fixture
def shared_env(postgres_server: Any, tmp_path) -> Iterator[dict[str, str]]:
    """FABRIC_STORE and FABRIC_ARTIFACTS as both clusters' nodes see them (set before each local Ray starts)."""
    env = {"FABRIC_STORE": postgres_server.create_database("handover"),
           "FABRIC_ARTIFACTS": str(tmp_path / "object-store")}  # stands in for s3://: shared by both clusters
    before = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    yield env
    for key, value in before.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


def test_a_dag_started_on_one_cluster_finishes_on_the_next_one(shared_env, tmp_path):
    from fabric.record.postgres import PostgresStore

    os.chdir(REPO)
    markers = tmp_path / "markers"
    client = fb.connect("local", num_cpus=2, home=str(tmp_path / "home-1"))
    try:
        submission = client.submit(three_step(str(markers)), {"submission_id": "handover-001"})
        deadline = time.monotonic() + 30
        while submission.status().node("b").state != "RUNNING" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert submission.status().node("a").state == "SUCCEEDED"
    finally:
        ray.shutdown()  # the first cluster goes: its registry's session ends, and the lease with it

    client = fb.connect("local", num_cpus=2, home=str(tmp_path / "home-2"))  # a new cluster, a fresh disk
    try:
        status = client.get("handover-001").wait(60)
        assert status.state == "SUCCEEDED", [(n.node_id, n.state, n.error) for n in status.nodes]
        assert runs(markers, "a") == 1 and runs(markers, "c") == 1
        assert client.get("handover-001").result("c") == "c(a(),b(a()))"
    finally:
        ray.shutdown()
    assert not (tmp_path / "home-2" / "fabric.db").exists()
    with PostgresStore(shared_env["FABRIC_STORE"], read_only=True) as store:
        record = store.get_submission("handover-001")
        assert record is not None and record.state == "SUCCEEDED"
