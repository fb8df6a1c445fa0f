"""Fused chains on a real local Ray (plan/fuse.py): one Ray task for the chain, each member its own attempts, a
failed member retried on its own (the members before it never run again), members resumed after a registry
restart without re-running those that succeeded."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import ray

from tests.conftest import REPO
from tests.ray.test_engine import dag

pytestmark = [pytest.mark.ray, pytest.mark.timeout(120)]


@pytest.fixture(scope="module")
def client(fabric_home: Path) -> Iterator[Any]:
    """This module's own local Ray, its registry started with FABRIC_FUSE=1 (its processes inherit this env)."""
    import fabric as fb

    saved = os.environ.get("FABRIC_FUSE")
    os.environ["FABRIC_FUSE"] = "1"
    os.chdir(REPO)  # workers import `tests.nodes` from the driver's working directory
    try:
        yield fb.connect("local", num_cpus=2, home=str(fabric_home))
    finally:
        ray.shutdown()
        if saved is None:
            os.environ.pop("FABRIC_FUSE", None)
        else:
            os.environ["FABRIC_FUSE"] = saved


def member(node_id: str, fn: str, ins: list[str] | None = None, **params: Any) -> dict[str, Any]:
    return {"id": node_id, "kind": "python_task", "entrypoint": f"tests.nodes:{fn}", "resources": {"cpu": "500m"},
            "params": params, "ins": ins or [], "outs": [node_id]}


def runs(marker_dir: Path, name: str) -> int:
    return len(list(marker_dir.glob(f"{name}.*")))


def test_a_member_that_fails_twice_retries_alone_and_the_members_before_it_run_once(client, tmp_path):
    marks = str(tmp_path)
    retry = {"retry": {"max_attempts": 3, "backoff_sec": 0.5}}
    spec = dag("fused", [
        member("a", "task_of", marker_dir=marks, name="a"),
        member("b", "task_of", ["x=a"], marker_dir=marks, name="b"),
        {**member("f", "flaky_step", ["x=b"], marker_dir=marks, failures=2), "slo": retry},
        member("d", "task_of", ["x=f"], marker_dir=marks, name="d"),
    ], edges=[("a", "b"), ("b", "f"), ("f", "d")])
    submission = client.submit(spec)
    status = submission.wait(60)
    assert status.state == "SUCCEEDED", [(n.node_id, n.state, n.error) for n in status.nodes]
    # every member listed, with its own state and attempts; the fused task itself never appears
    assert [(n.node_id, n.state, n.attempts) for n in status.nodes] == [
        ("a", "SUCCEEDED", 1), ("b", "SUCCEEDED", 1), ("f", "SUCCEEDED", 3), ("d", "SUCCEEDED", 1)]
    assert (runs(tmp_path, "a"), runs(tmp_path, "b"), runs(tmp_path, "flaky"), runs(tmp_path, "d")) == (1, 1, 3, 1)
    f = status.node("f")
    assert [h.outcome for h in f.history] == ["RETRYING", "RETRYING", "SUCCEEDED"]
    assert f.history[1].started_at - f.history[0].ended_at >= 0.5  # its own backoff
    assert f.history[0].error.type == "RuntimeError" and "planned failure 1" in f.history[0].error.message
    # a and b ran in one Ray task (fused); the retried f and d in another: the chain from f on, fused again
    assert submission.result("a") == submission.result("b") != submission.result("d")
    assert submission.result("f") == "ok after 3"
    logs = submission.logs("f")
    assert "flaky attempt 1" in logs and "flaky attempt 3" in logs  # each member keeps its own log


def test_fuse_false_keeps_a_node_a_task_of_its_own(client, tmp_path):
    marks = str(tmp_path)
    spec = dag("unfused", [
        member("a", "task_of", marker_dir=marks, name="a"),
        {**member("b", "task_of", ["x=a"], marker_dir=marks, name="b"), "fuse": False},
        member("c", "task_of", ["x=b"], marker_dir=marks, name="c"),
    ], edges=[("a", "b"), ("b", "c")])
    submission = client.submit(spec)
    assert submission.wait(60).state == "SUCCEEDED"
    assert len({submission.result(n) for n in "abc"}) == 3


def test_members_that_succeeded_are_not_run_again_after_a_registry_restart(client, tmp_path):
    marks = str(tmp_path)
    spec = dag("fused-resume", [
        member("a", "counted", marker_dir=marks, name="a"),
        member("b", "counted", ["x=a"], marker_dir=marks, name="b", seconds=4),
        member("c", "counted", ["x=b"], marker_dir=marks, name="c"),
    ], edges=[("a", "b"), ("b", "c")])
    submission = client.submit(spec)
    deadline = time.monotonic() + 30
    while submission.status().node("b").state != "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.1)  # a's success is reported while the fused task still runs b
    before = submission.status()
    assert before.node("a").state == "SUCCEEDED" and before.node("b").state == "RUNNING"
    ray.kill(client._registry, no_restart=False)
    time.sleep(0.5)
    status = submission.wait(60)
    assert status.state == "SUCCEEDED", [(n.node_id, n.state, n.error) for n in status.nodes]
    assert runs(tmp_path, "a") == 1, "a SUCCEEDED before the restart and must not run again"
    assert status.node("a").attempts == 1 and status.node("b").attempts >= 2
    assert submission.result("c") == "c(b(a()))"  # b's retry read a's output back from the artifact store
