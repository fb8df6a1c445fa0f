"""Faults under load on a multi-node `ray.cluster_utils.Cluster`: a worker SIGKILLed mid-node, retries
exhausted, a Ray node removed forcibly and gracefully, the registry killed for good. Each test runs
while a background client keeps submitting, ends with the invariants (tests/reliability/invariants.py)
and records its recovery time for docs/reliability.md.

The head holds no CPUs, so every node runs on the worker nodes the tests can remove.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import pytest
import ray

from tests.conftest import REPO
from tests.reliability.checks import check_all, wait_all
from tests.reliability.load import BackgroundLoad, marked_dag
from tests.reliability.results import record

pytestmark = [pytest.mark.ray, pytest.mark.timeout(150)]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    from ray.cluster_utils import Cluster

    import fabric as fb

    os.chdir(REPO)
    home = tmp_path_factory.mktemp("fabric-home")
    # Ray starts a worker process per concurrent task (ten of the load's 100m tasks a node) and, past one per CPU,
    # kills the idle ones after 1 s. On 2 cores a cold start of ~30 workers (~1 CPU-s of imports each) took longer
    # than the load's 20 s max_runtime: the timed-out attempts were force-cancelled, which kills their workers, and
    # the churn kept the cluster starved (a retry's fresh worker was seen importing for 20 s). So the fixture starts
    # the workers once, with a DAG as wide as the cluster, and Ray keeps idle workers for the module's length.
    ray_cluster = Cluster(initialize_head=True, connect=False,
                          head_node_args={"num_cpus": 0, "include_dashboard": False,
                                          "_system_config": {"idle_worker_killing_time_threshold_ms": 600_000}})
    # Three workers, one for each removal test to take away. No node is added mid-module: Cluster's nodes
    # share one socket directory, and a node added after a removal can reuse the removed one's socket name.
    for _ in range(3):
        ray_cluster.add_node(num_cpus=1)
    ray_cluster.wait_for_nodes()
    client = fb.connect(ray_cluster.address, home=str(home))
    warm = client.submit(marked_dag("warm", 31, str(home / "warm-markers"), seconds=3)).wait(240)
    assert warm.state == "SUCCEEDED", [(n.node_id, n.state) for n in warm.nodes]
    yield ray_cluster, client, home
    ray.shutdown()
    ray_cluster.shutdown()


def _wait_file(path: Path, timeout: float = 90) -> str:
    deadline = time.monotonic() + timeout
    while not path.exists() or not path.read_text():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)
    return path.read_text()


def _victim(client, tmp_path: Path, seconds: float = 6, max_attempts: int = 3):
    """A one-node DAG whose node writes its pid and sleeps: the thing the fault hits. Its attempts are
    bounded (max_runtime): after a Ray node is removed, Ray sometimes never starts the next attempt's
    task (its lease request is lost with the node), and the fabric's timeout is what retries it. It asks for the
    load's own 100m: a larger shape can wait in Ray behind the load's stream of small tasks (docs/scheduling.md)."""
    spec = marked_dag("victim", 1, str(tmp_path / "markers"), cpu="100m", max_attempts=max_attempts,
                      backoff_sec=0.5, max_runtime="20s")
    spec["nodes"][0]["params"].update({"seconds": seconds, "pid_file": str(tmp_path / "pid")})
    submission = client.submit(spec)
    pid = int(_wait_file(tmp_path / "pid").split()[0])
    return submission, pid


def _warm(client, load: BackgroundLoad, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not load.result.acknowledged or client.get(load.result.acknowledged[0]).status().state != "SUCCEEDED":
        assert time.monotonic() < deadline, "the background load never finished a submission"
        time.sleep(0.2)


def _raylet_node(ray_cluster, pid: int):
    """The Cluster node whose raylet started the worker process `pid`."""
    parents = {p.pid for p in psutil.Process(pid).parents()}
    for node in ray_cluster.worker_nodes:
        if node.all_processes["raylet"][0].process.pid in parents:
            return node
    raise AssertionError(f"no worker node owns pid {pid}")


def _recovery(status, fault_at: float) -> dict[str, float]:
    """From the node's own history: when the fault was noticed, a new attempt started, and it finished."""
    node = status.nodes[0]
    first, retry = node.history[0], node.history[-1]
    return {"detected_s": round(first.ended_at - fault_at, 2), "new_attempt_s": round(retry.started_at - fault_at, 2),
            "recovered_s": round(node.ended_at - fault_at, 2), "attempts": node.attempts,
            "attempts_timed_out": sum(1 for a in node.history if a.outcome == "RETRYING" and a.error is not None
                                      and a.error.type == "Timeout")}


def _finish(name: str, client, home: Path, tmp_path: Path, load: BackgroundLoad, ids: list[str],
            max_attempts: int = 3, restarts: int = 0) -> dict:
    assert not load.result.errors, load.result.errors[:3]
    acked = load.result.acknowledged + ids
    finals = wait_all(client, acked)
    figures = check_all(name, home / "fabric.db", acked, tmp_path / "markers", max_attempts, restarts=restarts)
    assert all(s.state == "SUCCEEDED" for s in finals.values()), {k: v.state for k, v in finals.items()}
    return {"background_submissions": len(load.result.acknowledged), "lost": figures["lost"]}


def test_a_worker_sigkilled_mid_node_is_retried_elsewhere_and_nothing_is_lost(cluster, tmp_path):
    _, client, home = cluster
    with BackgroundLoad(client, str(tmp_path / "markers"), label="sigkill") as load:
        # A warm cluster: on 2 cores, the first seconds of load start a dozen Ray worker processes, and the
        # victim's first attempt could spend its 20 s max_runtime waiting for one (this test is about the kill).
        _warm(client, load)
        submission, pid = _victim(client, tmp_path)
        fault_at = time.time()
        os.kill(pid, signal.SIGKILL)
        status = submission.wait(60)
    assert status.state == "SUCCEEDED" and status.nodes[0].attempts == 2, [
        (a.outcome, round(a.started_at - fault_at, 2), round((a.worker_started_at or 0) - fault_at, 2),
         round((a.ended_at or 0) - fault_at, 2), a.error and a.error.type) for a in status.nodes[0].history]
    assert status.nodes[0].history[0].error.type in ("WorkerCrashedError", "RayTaskError", "NodeDiedError")
    extra = _finish("worker SIGKILL mid-node", client, home, tmp_path, load, [submission.id])
    record("fault", "worker SIGKILL mid-node", **_recovery(status, fault_at), **extra,
           outcome="retried with backoff; SUCCEEDED")


def test_retries_exhausted_end_failed_after_exactly_max_attempts(cluster, tmp_path):
    _, client, home = cluster
    spec = marked_dag("doomed", 2, str(tmp_path / "markers"), max_attempts=3, backoff_sec=0.2)
    spec["nodes"][0]["entrypoint"] = "tests.reliability.nodes:fail_always"
    with BackgroundLoad(client, str(tmp_path / "markers"), label="exhausted") as load:
        began = time.time()
        status = client.submit(spec).wait(60)
    root, child = status.node("n0"), status.node("n1")
    assert status.state == "FAILED" and root.state == "FAILED" and root.attempts == 3 and child.state == "SKIPPED"
    assert len(list((tmp_path / "markers").glob(f"{status.submission_id}~n0~*"))) == 3  # exactly, no hidden retries
    load_ids = load.result.acknowledged
    finals = wait_all(client, load_ids)
    assert all(s.state == "SUCCEEDED" for s in finals.values())
    check_all("retries exhausted", home / "fabric.db", [*load_ids, status.submission_id], tmp_path / "markers", 3)
    record("fault", "retries exhausted", attempts=root.attempts, executions=3, failed_after_s=round(
        root.ended_at - began, 2), outcome="FAILED after max_attempts=3; descendant SKIPPED",
           background_submissions=len(load_ids), lost=0)


@pytest.mark.parametrize("graceful", [False, True],
                         ids=["forced", "graceful"])
def test_a_ray_node_removed_mid_node_is_survived(cluster, tmp_path, graceful):
    ray_cluster, client, home = cluster
    with BackgroundLoad(client, str(tmp_path / "markers"), label=f"remove-{graceful}") as load:
        submission, pid = _victim(client, tmp_path, seconds=4)
        doomed = _raylet_node(ray_cluster, pid)
        fault_at = time.time()
        ray_cluster.remove_node(doomed, allow_graceful=graceful)
        status = submission.wait(90)
    assert status.state == "SUCCEEDED" and status.nodes[0].attempts >= 2, [
        (a.outcome, a.started_at - fault_at, (a.worker_started_at or 0) - fault_at, (a.worker_ended_at or 0) - fault_at,
         a.error and a.error.type) for a in status.nodes[0].history]
    extra = _finish(f"Ray node removed ({'graceful' if graceful else 'forced'})", client, home, tmp_path, load,
                    [submission.id])
    record("fault", f"Ray node removed ({'gracefully' if graceful else 'forcibly'})", **_recovery(status, fault_at),
           **extra, outcome="attempt retried on another node; SUCCEEDED")


def test_the_registry_killed_for_good_is_started_anew_from_the_store(cluster, tmp_path):
    _, client, home = cluster
    spec = marked_dag("resume", 3, str(tmp_path / "markers"), seconds=3, max_attempts=2, max_runtime="20s")
    with BackgroundLoad(client, str(tmp_path / "markers"), label="registry-dead") as load:
        submission = client.submit(spec)
        deadline = time.monotonic() + 60
        while submission.status().node("n0").state != "SUCCEEDED":  # n1, n2 (3 s each) are then under way
            assert time.monotonic() < deadline, submission.status().nodes
            time.sleep(0.05)
        old_pid = ray.get(client._registry.pid.remote())
        fault_at = time.time()
        ray.kill(client._registry, no_restart=True)  # no Ray restart: only the next caller can bring it back
        during = submission.status()  # the SDK starts a new registry, which answers from the record
        answered_s = time.time() - fault_at
        status = submission.wait(60)
    assert during.node("n0").state == "SUCCEEDED"
    assert status.state == "SUCCEEDED", [(n.node_id, n.state) for n in status.nodes]
    from fabric.actors.registry import NAMESPACE, REGISTRY_NAME

    assert ray.get(ray.get_actor(REGISTRY_NAME, namespace=NAMESPACE).pid.remote()) != old_pid
    assert len(list((tmp_path / "markers").glob(f"{submission.id}~n0~*"))) == 1, "n0 SUCCEEDED: not run again"
    # An attempt interrupted by the control plane is not charged to max_attempts: one more run allowed.
    extra = _finish("registry killed for good", client, home, tmp_path, load, [submission.id], max_attempts=3,
                    restarts=1)
    record("fault", "registry actor killed for good", answered_again_s=round(answered_s, 2),
           recovered_s=round(status.ended_at - fault_at, 2), **extra,
           outcome="the next SDK call started a new registry; it resumed from the store; SUCCEEDED")
