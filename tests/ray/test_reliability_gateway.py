"""Load, faults and the canary secret through the real gateway (2 replicas) on a local Ray with admission on.

200 submissions x 10 nodes from 8 concurrent SDK clients over HTTP; a gateway replica killed under load;
the registry (which holds the quota ledger) killed while a team's GPU work is queued against its quota; a
canary secret used by reference and looked for everywhere. Each ends with the invariants and records
its figures (tests/reliability/) for docs/reliability.md.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time

import psutil
import pytest
import ray

from tests.conftest import REPO, free_port
from tests.reliability.checks import check_all, wait_all
from tests.reliability.gateway import serve_gateway
from tests.reliability.invariants import QuotaSampler, check_canary_absent, quota_peaks_from_events
from tests.reliability.load import marked_dag, run_clients
from tests.reliability.results import percentiles, record

pytestmark = [pytest.mark.ray, pytest.mark.timeout(240)]

SCHEDULING = """
aging_s: 3600
quotas:
  research: {gpu: 1}
"""
CANARY = "canary-" + hashlib.sha256(b"fabric reliability canary").hexdigest()[:24]


@pytest.fixture(scope="module")
def fabric_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("fabric-home")
    (home / "scheduling.yaml").write_text(SCHEDULING)  # admission on: quotas are enforced and sampled
    (home / "secrets" / "canary").mkdir(parents=True)
    (home / "secrets" / "canary" / "token").write_text(CANARY)  # as a mounted Kubernetes Secret would be
    return home


@pytest.fixture(scope="module")
def client(fabric_home):
    """As conftest's, with Ray's dashboard: the canary is looked for in Ray's own task, actor and job info,
    which only the dashboard's state API lists."""
    import fabric as fb

    os.chdir(REPO)  # workers import `tests.reliability.nodes` from the driver's working directory
    fabric_client = fb.connect("local", num_cpus=2, num_gpus=4, home=str(fabric_home), include_dashboard=True,
                               dashboard_host="127.0.0.1", dashboard_port=free_port())
    yield fabric_client
    ray.shutdown()


@pytest.fixture(scope="module")
def gateway(client, tmp_path_factory):
    yield from serve_gateway(tmp_path_factory.mktemp("gateway"), replicas=2)


class MemorySampler:
    """Peak RSS of the registry actor, the gateway replicas, and every Ray process, sampled in a thread."""

    def __init__(self, registry_pid: int) -> None:
        self.registry_pid = registry_pid
        self.peak = {"registry_mb": 0.0, "ray_total_mb": 0.0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0.0
            for proc in psutil.process_iter(["pid", "name", "cmdline", "memory_info"]):
                cmd = " ".join(proc.info["cmdline"] or ())
                if "ray" in cmd and proc.info["memory_info"] is not None:
                    rss = proc.info["memory_info"].rss / 2**20
                    total += rss
                    if proc.info["pid"] == self.registry_pid:
                        self.peak["registry_mb"] = max(self.peak["registry_mb"], rss)
            self.peak["ray_total_mb"] = max(self.peak["ray_total_mb"], total)
            self._stop.wait(0.5)


def _quotas(gateway):
    return lambda: gateway.http.get("/api/orch/quotas", headers=gateway.headers("admin")).json()["quotas"]


def test_load_200_submissions_of_10_nodes_from_8_clients(client, gateway, fabric_home, tmp_path):
    markers = tmp_path / "markers"
    clients = [gateway.sdk("research" if i % 2 else "trading") for i in range(8)]
    submissions, nodes = 200, 10

    def spec_for(n: int) -> dict:
        spec = marked_dag(f"load-{n}", nodes, str(markers), cpu="500m")
        if n % 20 == 1:  # research's clients: some GPU work, held to its quota of 1 GPU
            for node in spec["nodes"]:
                node["resources"]["gpu"] = 0.5
        return spec

    registry_pid = ray.get(client._registry.pid.remote())
    began = time.time()
    with MemorySampler(registry_pid) as memory, QuotaSampler(_quotas(gateway)) as quotas:
        result = run_clients(clients, submissions, spec_for, lambda n: {"labels": {"load": "ci"}})
        finals = wait_all(client, result.acknowledged, timeout=200)  # the admin view: every team's
    wall = time.time() - began
    assert not result.errors, result.errors[:3]
    assert len(result.acknowledged) == submissions
    assert {s.state for s in finals.values()} == {"SUCCEEDED"}
    end_to_end = [finals[sid].ended_at - result.started_at[sid] for sid in result.acknowledged]
    invariants = check_all("load: 200 x 10 from 8 clients", fabric_home / "fabric.db", result.acknowledged,
                           markers, 2, label=("load", "ci"))
    quota = quotas.check()
    peaks = quota_peaks_from_events(fabric_home / "fabric.db", result.acknowledged)
    assert peaks.get("research", 0) <= 1.0 + 1e-9, peaks
    record("load", "CI: 200 submissions x 10 nodes, 8 clients over HTTP", **result.figures(),
           nodes=submissions * nodes, end_to_end_s={k: round(v, 2) for k, v in percentiles(end_to_end).items()},
           wall_s=round(wall, 1), nodes_per_s=round(submissions * nodes / wall, 1),
           peak_registry_rss_mb=round(memory.peak["registry_mb"]), peak_ray_rss_mb=round(memory.peak["ray_total_mb"]),
           quota_ticks=quota["ticks"], quota_ticks_over=0, research_gpu_peak_from_audit=peaks.get("research", 0.0),
           lost=invariants["lost"], duplicates=0)


def _replica_actors() -> list[str]:
    from ray.util.state import list_actors

    # This module's cluster by its address: with no address the State API refuses when any other Ray runs here.
    address = ray.get_runtime_context().gcs_address
    return [a.name for a in list_actors(address=address, filters=[("state", "=", "ALIVE")], limit=1000)
            if a.class_name.startswith("ServeReplica") and "Gateway" in a.class_name]


def test_a_gateway_replica_killed_under_load_leaves_one_submission_per_key(client, gateway, fabric_home, tmp_path):
    markers = tmp_path / "markers"
    clients = [gateway.sdk("research") for _ in range(4)]
    [victim, *_] = _replica_actors()
    killed_at: list[float] = []

    def kill_soon() -> None:
        time.sleep(1.0)
        killed_at.append(time.time())
        ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)

    killer = threading.Thread(target=kill_soon)
    killer.start()
    result = run_clients(clients, 80, lambda n: marked_dag(f"replica-{n}", 2, str(markers)),
                         lambda n: {"labels": {"load": "replica-kill"}})
    killer.join()
    assert not result.errors, result.errors[:3]  # the SDK retried through the outage with the same key
    deadline = time.monotonic() + 60
    while len(_replica_actors()) < 2:  # Serve replaces the replica
        assert time.monotonic() < deadline
        time.sleep(0.2)
    replaced_s = time.time() - killed_at[0]
    finals = wait_all(clients[0], result.acknowledged)
    assert {s.state for s in finals.values()} == {"SUCCEEDED"}
    invariants = check_all("gateway replica killed", fabric_home / "fabric.db", result.acknowledged, markers, 2,
                           label=("load", "replica-kill"))
    record("fault", "a gateway replica killed under load", replica_replaced_s=round(replaced_s, 2),
           submit_ms={k: round(v * 1000) for k, v in percentiles(result.submit_s).items()},
           submissions=len(result.acknowledged), submit_errors=0, lost=invariants["lost"],
           outcome="SDK retried with its idempotency key: exactly one submission per key")


def test_the_quota_ledger_holder_killed_never_over_admits(client, gateway, fabric_home, tmp_path):
    """The engine holds the quota ledger (journalled to the store). Killing its actor while a team's GPU
    work queues against the quota must not admit more than the quota, during or after the restart."""
    research = gateway.sdk("research")
    spec = marked_dag("gpu-burst", 1, str(tmp_path / "markers"), cpu="100m", seconds=1.0)
    spec["nodes"][0]["resources"]["gpu"] = 1
    with QuotaSampler(_quotas(gateway), interval_s=0.05) as quotas:
        ids = [research.submit(spec, {"labels": {"load": "quota"}}).id for _ in range(6)]
        time.sleep(1.5)
        fault_at = time.time()
        ray.kill(client._registry, no_restart=False)
        back = research.get(ids[0])  # the SDK waits through the restart
        answered_s = time.time() - fault_at
        finals = wait_all(research, ids, timeout=120)
    assert back.id == ids[0] and {s.state for s in finals.values()} == {"SUCCEEDED"}
    check_all("quota holder killed", fabric_home / "fabric.db", ids, tmp_path / "markers", 1, restarts=1)
    ticks = quotas.check()
    peaks = quota_peaks_from_events(fabric_home / "fabric.db", ids)
    assert peaks["research"] <= 1.0, peaks
    record("fault", "quota ledger holder (registry) killed", answered_again_s=round(answered_s, 2),
           recovered_s=round(max(s.ended_at for s in finals.values()) - fault_at, 2), quota_ticks=ticks["ticks"],
           ticks_over_quota=0, ticks_unanswered=ticks["ticks_unanswered"],
           research_gpu_peak_from_audit=peaks["research"],
           outcome="closed while down (no tick answered over quota); the ledger was rebuilt; never over 1 GPU")


def test_a_canary_secret_passed_by_reference_never_leaks(client, gateway, fabric_home, tmp_path):
    research = gateway.sdk("research")
    markers = tmp_path / "markers"
    spec = {"version": 1, "pipeline_id": "secretive", "nodes": [
        {"id": "use", "kind": "python_task", "entrypoint": "tests.reliability.nodes:use_secret",
         "params": {"marker_dir": str(markers), "scope": "canary", "key": "token"}}]}
    used = research.submit(spec, {"secrets_scope": ["canary"]})
    assert used.wait(60).state == "SUCCEEDED"
    assert (markers / "secret.sha256").read_text() == hashlib.sha256(CANARY.encode()).hexdigest()  # it was read
    unscoped = {"version": 1, "pipeline_id": "snoop", "nodes": [
        {"id": "snoop", "kind": "python_task", "entrypoint": "tests.reliability.nodes:read_unscoped_secret",
         "params": {"scope": "canary", "key": "token"}, "slo": {"retry": {"max_attempts": 1}}}]}
    denied = research.submit(unscoped).wait(60)  # no secrets_scope: the same read is refused
    assert denied.state == "FAILED" and "not listed" in denied.node("snoop").error.message

    from ray.util.state import list_actors, list_jobs, list_tasks

    address = ray.get_runtime_context().gcs_address
    http, admin = gateway.http, gateway.headers("admin")
    texts = {
        "status": str(used.status().to_dict()), "logs": used.logs("use"), "list": str(research.list(limit=1000)),
        "denied status": str(denied.to_dict()),
        "metrics": http.get("/metrics").text, "queues": http.get("/api/orch/queues", headers=admin).text,
        "ray tasks (runtime_env, args)": str(list_tasks(address=address, detail=True, limit=10_000)),
        "ray actors": str(list_actors(address=address, detail=True, limit=10_000)),
        "ray jobs": str(list_jobs(address=address, detail=True)),
    }
    session = ray._private.worker._global_node.get_session_dir_path()
    secrets_dir = fabric_home / "secrets"
    files = [p for p in fabric_home.iterdir() if p != secrets_dir] + [markers]
    from pathlib import Path

    figures = check_canary_absent(CANARY, texts, [*files, Path(session) / "logs"])
    record("isolation", "canary secret by reference", **figures, read_by_scoped_node=True,
           refused_without_scope=True,
           where="API answers (status, logs, list, metrics, queues), Ray task/actor/job info, the store and audit "
                 "(fabric.db), node dirs and logs, Ray's session logs")
