"""The issue's cluster with no shared disk: a head that runs only the registry (`--num-cpus=0`), the MLflow
server and the gateway, and two worker nodes, each in its own mount namespace with a private tmpfs over
FABRIC_HOME (the same path, another disk). On it both examples run with their nodes on alternating workers;
the head serves every node file, the whole logs (live while a node runs) and the MLflow run and model; and a
whole-cluster restart onto fresh worker disks finishes a DAG begun before it, running no SUCCEEDED node again.
Executions are counted in files outside FABRIC_HOME, which the restart does not wipe."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import REPO, free_port, ray_head_process

pytestmark = [pytest.mark.ray, pytest.mark.timeout(420)]

WORKERS = ("w1", "w2")
DRIVE = "import sys; from tests.ray.test_cluster_no_shared_disk import drive; drive(*sys.argv[1:])"
needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("nsenter") is None,
    reason="a private tmpfs per node needs root, unshare and nsenter")


def _pin(node: dict[str, Any], worker: str) -> dict[str, Any]:
    resources = dict(node.get("resources") or {"cpu": "500m"})
    resources["custom"] = {worker: 1}
    return {**node, "resources": resources}


def quant_spec() -> dict[str, Any]:
    """The README's example, its nodes alternating between the two workers."""
    spec = yaml.safe_load((REPO / "jobs" / "dags" / "quant_backtest.yaml").read_text())
    spec["nodes"] = [_pin(node, WORKERS[i % 2]) for i, node in enumerate(spec["nodes"])]
    return spec


def ml_spec() -> dict[str, Any]:
    """The ML example up to its model card (promote and serve deploy a model: their own tests), fewer epochs;
    the model trains on one worker and is read back from MLflow on the other."""
    spec = yaml.safe_load((REPO / "jobs" / "dags" / "bt_xs_bilstm.yaml").read_text())
    keep = ("make_data", "clean_prices", "features", "train_model", "backtest", "model_card")
    spec["nodes"] = [_pin(node, WORKERS[(i + 1) % 2]) for i, node in enumerate(spec["nodes"]) if node["id"] in keep]
    for node in spec["nodes"]:
        node.pop("cache", None)
        if node["id"] == "train_model":
            node["params"].update(epochs=2, max_samples=2000)
    spec["edges"] = [e for e in spec["edges"] if e["from"] in keep and e["to"] in keep]
    return spec


def restart_spec(markers: str, release: str) -> dict[str, Any]:
    """a (w1) -> b (w2, ticks until `release` exists) -> c (w1), every execution counted under `markers`."""
    def node(node_id: str, worker: str, entrypoint: str, params: dict[str, Any], ins: list[str]) -> dict[str, Any]:
        return {"id": node_id, "kind": "python_task", "entrypoint": f"tests.nodes:{entrypoint}", "ins": ins,
                "outs": [node_id], "params": {"marker_dir": markers, "name": node_id, **params},
                "resources": {"cpu": "250m", "custom": {worker: 1}}}

    return {"version": 1, "pipeline_id": "cluster_restart", "nodes": [
        node("a", "w1", "counted", {}, []),
        node("b", "w2", "ticking", {"release": release, "hold_s": 600}, ["x=a"]),
        node("c", "w1", "counted", {}, ["x=a", "y=b"]),
    ], "edges": [{"from": "a", "to": "b"}, {"from": "b", "to": "c"}]}


MAP_ITEMS = 96  # packs of 3 (a map is spread over at least 32 packs)


def map_spec(markers: str) -> dict[str, Any]:
    """A map of MAP_ITEMS children on w2, each printing and returning its item times 10."""
    return {"version": 1, "pipeline_id": "packed_map", "nodes": [
        {"id": "xs", "kind": "python_task", "entrypoint": "tests.nodes:int_list", "params": {"n": MAP_ITEMS},
         "outs": ["xs"], "resources": {"cpu": "250m", "custom": {"w2": 1}}},
        {"id": "each", "kind": "python_task", "entrypoint": "tests.nodes:item_said", "ins": ["item=xs"],
         "outs": ["each"], "params": {"marker_dir": markers}, "map": {"over": "item"},
         "resources": {"cpu": "250m", "custom": {"w2": 1}}},
    ], "edges": [{"from": "xs", "to": "each"}]}


def _wait_nodes(count: int) -> None:
    import ray

    deadline = time.monotonic() + 60
    while sum(1 for n in ray.nodes() if n["Alive"]) < count and time.monotonic() < deadline:
        time.sleep(0.3)
    assert sum(1 for n in ray.nodes() if n["Alive"]) == count, "the worker nodes did not join"


def _until(check: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what}")


def drive(phase: str, address: str, home_dir: str, tmp_dir: str, mlflow_uri: str, port: str = "0") -> None:
    """The client side, in its own process (Ray reads the cluster's token from that process's environment)."""
    import ray

    import fabric as fb

    home, tmp = Path(home_dir), Path(tmp_dir)
    client = fb.connect(address, home=str(home))
    _wait_nodes(3)
    if phase == "before":
        _before_restart(client, home, tmp, mlflow_uri, int(port))
    else:
        _after_restart(client, home, tmp)
    ray.shutdown()
    print("DRIVE-OK")


def _before_restart(client: Any, home: Path, tmp: Path, mlflow_uri: str, port: int) -> None:
    import mlflow

    import fabric as fb
    from fabric.cli.gateway import mint_token, start_gateway

    client.submit(restart_spec(str(tmp / "markers"), str(tmp / "release")),
              {"submission_id": "restart-001"})
    quant = client.submit(quant_spec(), {"submission_id": "quant-001"})
    ml = client.submit(ml_spec(), {"submission_id": "ml-001"})

    token = mint_token(home / "tokens.json", "ops", admin=True)
    http = fb.connect(start_gateway(home / "tokens.json", port), token=token)

    # Live: the log of a node RUNNING on a worker grows, read through the head's gateway.
    running = http.get("restart-001")
    first = _until(lambda: "tick 3 " in (text := running.logs("b")) and text, 60, "b's first ticks")
    second = _until(lambda: len(text := running.logs("b")) > len(first) + 40 and text, 30, "b's log to grow")
    assert second.startswith(first[:first.rindex("tick")]) and running.status().node("b").state == "RUNNING"

    for submission in (quant, ml):
        status = http.get(submission.id).wait(240)
        assert status.state == "SUCCEEDED", [(n.node_id, n.state, n.error) for n in status.nodes]
        listing = http.artifacts(submission.id)
        assert listing["report"] is True, listing
        assert json.loads(http.artifact(submission.id, None, "metrics.json"))
        for node_id, names in listing["nodes"].items():  # every node file, byte for byte as on the head's disk
            for name in names:
                assert http.artifact(submission.id, node_id, name) == \
                    (home / "artifacts" / submission.id / node_id / "files" / name).read_bytes()
        for node in status.nodes:  # the whole log of every attempt is the head's file
            text = http.get(submission.id).logs(node.node_id)
            log = home / "logs" / submission.id / node.node_id / "attempt-1.log"
            # Bytes, not read_text(): its newline translation turns a progress bar's "\r" into "\n".
            whole = log.read_bytes().decode("utf-8", "replace") if log.exists() else None
            assert (whole is None and "--- attempt" not in text) or (whole is not None and whole in text), (
                node.node_id, len(text), whole if whole is None else len(whole), text[-500:], (whole or "")[-500:])
    report = json.loads(http.artifact("quant-001", "report", "metrics.json"))
    assert {"sharpe", "max_drawdown", "days"} <= set(report)
    assert "model_card.json" in http.artifacts("ml-001")["nodes"]["model_card"]
    # Ray Train checkpointed every epoch on the head (its worker and the node's task may be on two disks),
    # and its heartbeat is there beside them.
    space = home / "artifacts" / "checkpoints" / "ml-001" / "train_model"
    epochs = sorted(json.loads(p.read_text())["epoch"] for p in space.rglob("fabric_state.json"))
    assert epochs == [0, 1], epochs
    assert json.loads((space / "train-worker-0.json").read_text())["done"] is True

    # The MLflow run and the registered model are on the head's server (its store and artifacts on the head).
    trained = json.loads(http.artifact("ml-001", "train_model", "metrics.json"))
    tracking = mlflow.MlflowClient(tracking_uri=mlflow_uri, registry_uri=mlflow_uri)
    run = tracking.get_run(trained["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["submission_id"] == "ml-001"
    assert "val_loss" in run.data.metrics
    name, version = trained["model_uri"].removeprefix("models:/").split("/")
    model = tracking.get_model_version(name, version)
    assert model.tags["submission_id"] == "ml-001" and model.run_id == run.info.run_id
    assert any((home / "artifacts" / "mlflow").rglob("MLmodel")), "the model's files are not on the head"
    with urllib_get(f"{mlflow_uri}/api/2.0/mlflow/registered-models/get?name={name}") as response:
        assert json.loads(response.read())["registered_model"]["name"] == name

    # A map on a worker: its children run in packs, and each pack's outputs reach the head as one file.
    mapped = client.submit(map_spec(str(tmp / "map-markers")), {"submission_id": "map-001"})
    done = mapped.wait(120)
    assert done.state == "SUCCEEDED", [(n.node_id, n.state, n.error) for n in done.nodes if n.state != "SUCCEEDED"]
    assert mapped.result("each") == [i * 10 for i in range(MAP_ITEMS)]
    from fabric.execute.outputs import has_outputs, load_outputs

    assert list((home / "artifacts" / "map-001").rglob("pack-*.pack")), "no child ran in a pack"
    for i in range(MAP_ITEMS):  # as a resume or a re-run on the head finds them
        assert has_outputs(str(home / "artifacts"), "map-001", f"each[{i}]"), i
    assert load_outputs(str(home / "artifacts"), "map-001", "each[9]", ["each"]) == 90

    status = running.status()
    assert status.node("a").state == "SUCCEEDED" and status.node("b").state == "RUNNING", status


@contextlib.contextmanager
def urllib_get(url: str) -> Iterator[Any]:
    import urllib.request

    with urllib.request.urlopen(url, timeout=10) as response:
        yield response


def _after_restart(client: Any, home: Path, tmp: Path) -> None:
    status = client.get("restart-001").wait(90)
    assert status.state == "SUCCEEDED", [(n.node_id, n.state, n.error) for n in status.nodes]
    runs = {name: len(list((tmp / "markers").glob(f"{name}.*"))) for name in "abc"}
    assert runs == {"a": 1, "b": 2, "c": 1}, runs  # b was RUNNING at the restart; a had SUCCEEDED
    logs = client.get("restart-001").logs("b")
    assert "of execution 1" in logs and "of execution 2" in logs  # both attempts' whole logs, on the head
    assert client.get("restart-001").result("c").startswith("c(")


@contextlib.contextmanager
def cluster(tmp_path: Path, home: Path, mlflow_uri: str) -> Iterator[tuple[str, dict[str, str], list[int]]]:
    """A head with no CPUs and two workers, each with a fresh private tmpfs at FABRIC_HOME."""
    extra = {"PYTHONPATH": str(REPO), "FABRIC_HOME": str(home), "FABRIC_MLFLOW_URI": mlflow_uri}
    head = ray_head_process(tmp_path, num_cpus=0, extra_env=extra)
    address, env, _ = head.__enter__()
    ray_bin = Path(sys.executable).with_name("ray")
    worker_env = {**env, "RAY_AUTH_TOKEN_PATH": str(tmp_path / ".ray" / "auth_token")}
    workers: list[subprocess.Popen[bytes]] = []
    temps: list[str] = []
    try:
        for name in WORKERS:
            # Two nodes on one machine: each with its own Ray temp dir (sockets, session) and its agents on their
            # own ports, as on two machines (shared, the two raylets race for one socket name and one crashes).
            ports = " ".join(f"--{flag}={free_port()}" for flag in (
                "dashboard-agent-listen-port", "dashboard-agent-grpc-port", "metrics-export-port",
                "runtime-env-agent-port"))
            temps.append(tempfile.mkdtemp(prefix="rw-", dir="/tmp"))  # short: Ray's socket paths live under it
            script = (f'mount -t tmpfs tmpfs "$FABRIC_HOME" && exec {ray_bin} start --address={address} --block '
                      f"--num-cpus=2 --resources='{{\"{name}\": 100}}' --node-ip-address=127.0.0.1 "
                      f"--temp-dir={temps[-1]} {ports}")
            with open(tmp_path / f"{name}.log", "ab") as log:  # kept for a failure's post-mortem
                workers.append(subprocess.Popen(
                    ["unshare", "-m", "--propagation", "private", "sh", "-c", script], cwd=REPO, env=worker_env,
                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True))
        yield address, env, [w.pid for w in workers]
    finally:
        # The head first (its teardown also kills every process that names its GCS), then what is left of
        # each worker with its process group; a worker's tmpfs goes with its mount namespace.
        try:
            head.__exit__(None, None, None)
        finally:
            for worker in workers:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(worker.pid, signal.SIGKILL)
                worker.wait(20)
            for temp in temps:
                shutil.rmtree(temp, ignore_errors=True)


def _crash(address: str, worker_pids: list[int]) -> None:
    """The whole cluster lost at once (as a power cut): every process of it frozen, then killed, so none sees
    another go first (a registry that outlives a worker fails its running node, as it should for a lost node)."""
    import psutil

    port = address.rsplit(":", 1)[1]
    heads = [p.pid for p in psutil.process_iter(["cmdline"])
             if "--head" in (p.info["cmdline"] or ()) and f"--port={port}" in (p.info["cmdline"] or ())]
    # Each node's whole process tree (Ray's workers, the registry's among them, are the raylets' children,
    # renamed `ray::...` and in no group of ours), and anything else that names the cluster's GCS.
    doomed: dict[int, Any] = {}
    for root in heads + worker_pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            top = psutil.Process(root)
            doomed.update({p.pid: p for p in [top, *top.children(recursive=True)]})
    for process in psutil.process_iter(["cmdline"]):
        if any(f":{port}" in part for part in process.info["cmdline"] or ()):
            doomed.setdefault(process.pid, process)
    doomed.pop(os.getpid(), None)
    assert heads and len(doomed) > 6, (heads, doomed)
    for action in ("suspend", "kill"):
        for process in doomed.values():
            with contextlib.suppress(psutil.NoSuchProcess):
                getattr(process, action)()


def _run_drive(env: dict[str, str], *args: str) -> None:
    drive_run = subprocess.run([sys.executable, "-c", DRIVE, *args], cwd=REPO, env={**env, "PYTHONPATH": str(REPO)},
                               capture_output=True, text=True, timeout=300)
    assert "DRIVE-OK" in drive_run.stdout, drive_run.stdout[-3000:] + drive_run.stderr[-6000:]


def _worker_disk(pid: int, home: Path) -> list[str]:
    """What a worker's own disk at FABRIC_HOME holds (seen from inside its mount namespace)."""
    found = subprocess.run(["nsenter", "-t", str(pid), "-m", "find", str(home), "-type", "f"],
                           capture_output=True, text=True, timeout=10, check=True)
    return [line.removeprefix(str(home) + "/") for line in found.stdout.splitlines()]


@needs_root
def test_examples_files_logs_mlflow_and_a_whole_cluster_restart_on_nodes_with_no_shared_disk(tmp_path: Path) -> None:
    from fabric.ml.server import start_server

    home = tmp_path / "fabric"
    home.mkdir()
    started: dict[str, Any] = {}
    mlflow_port = free_port()
    server = threading.Thread(target=lambda: started.update(server=start_server(
        str(home), str(home / "artifacts"), port=mlflow_port, timeout=90)))
    server.start()
    mlflow_uri = f"http://127.0.0.1:{mlflow_port}"
    try:
        with cluster(tmp_path, home, mlflow_uri) as (address, env, pids):
            server.join(100)
            assert "server" in started, "the MLflow server did not start"
            _run_drive(env, "before", address, str(home), str(tmp_path), mlflow_uri, str(free_port()))
            # Nothing on a worker's own disk: no store, no MLflow, no artifacts, no checkpoints, no heartbeats,
            # no logs, and no scratch left by a node that ended.
            for pid in pids:
                assert _worker_disk(pid, home) == []
            _crash(address, pids)
        (tmp_path / "release").touch()  # the whole cluster is gone; b finishes on the next one
        with cluster(tmp_path, home, mlflow_uri) as (address, env, _):
            _run_drive(env, "after", address, str(home), str(tmp_path), mlflow_uri)
    finally:
        server.join(100)
        if "server" in started:
            started["server"].stop()
