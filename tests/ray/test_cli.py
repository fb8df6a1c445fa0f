"""The `fabric` command as a user runs it: the embedded local run, validation, and a real cluster."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import free_port as _free_port
from tests.conftest import ray_head_process

REPO = Path(__file__).resolve().parents[2]
FABRIC = [sys.executable, "-m", "fabric.cli"]

pytestmark = pytest.mark.timeout(180)


def fabric(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([*FABRIC, *args], cwd=REPO, env=env or os.environ.copy(), capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.ray
def test_run_the_example_end_to_end(tmp_path):
    env = {**os.environ, "FABRIC_HOME": str(tmp_path), "COLUMNS": "160"}
    result = fabric("run", "jobs/dags/quant_backtest.yaml", "--num-cpus", "2", env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCEEDED quant_backtest_v1" in result.stdout
    for node in ("make_data", "clean_prices", "features", "fit", "backtest", "report"):
        assert node in result.stdout
    assert "sharpe" in result.stdout and "max_drawdown" in result.stdout
    assert list(tmp_path.glob("runs/*/report/metrics.json"))


@pytest.mark.ray
def test_run_a_failing_dag_exits_non_zero_with_the_error(tmp_path):
    spec = tmp_path / "fails.yaml"
    spec.write_text("""
version: 1
pipeline_id: fails
nodes:
  - {id: bad, kind: python_task, entrypoint: "tests.nodes:boom", params: {message: "no prices for 2020-01-02"}}
""")
    result = fabric("run", str(spec), "--num-cpus", "2", env={**os.environ, "FABRIC_HOME": str(tmp_path)})
    assert result.returncode == 1
    assert "no prices for 2020-01-02" in result.stderr and "FAILED" in result.stdout


def test_a_cycle_is_named_and_nothing_runs(tmp_path):
    spec = tmp_path / "cycle.yaml"
    spec.write_text("""
version: 1
pipeline_id: loops
nodes:
  - {id: a, kind: python_task, entrypoint: "m:f"}
  - {id: b, kind: python_task, entrypoint: "m:f"}
  - {id: c, kind: python_task, entrypoint: "m:f"}
edges: [{from: a, to: b}, {from: b, to: c}, {from: c, to: a}]
""")
    for command in ("run", "validate"):
        result = fabric(command, str(spec))
        assert result.returncode == 2, result.stdout + result.stderr
        assert "SPEC_CYCLE" in result.stderr
        assert any(f"{x} -> {y} -> {z} -> {x}" in result.stderr.replace("\n", " ")
                   for x, y, z in (("a", "b", "c"), ("b", "c", "a"), ("c", "a", "b")))


def test_validate_the_design_example_names_kinds_that_do_not_run_here():
    result = fabric("validate", "tests/data/design_example.yaml")
    assert result.returncode == 2
    assert "valid" in result.stdout  # the spec itself is fine ...
    assert "trino_sql" in result.stderr and "KIND_NOT_RUNNABLE" in result.stderr  # ... but not runnable here
    assert "python_task" in result.stderr


def test_schema_is_json_schema_with_the_spec_fields():
    result = fabric("schema")
    assert result.returncode == 0
    schema = json.loads(result.stdout)
    assert {"version", "pipeline_id", "nodes", "edges"} <= set(schema["properties"])
    params = json.loads(fabric("schema", "--runtime-params").stdout)
    assert "submission_id" in params["properties"]


@pytest.fixture()
def ray_head(tmp_path):
    with ray_head_process(tmp_path) as head:
        yield head


@pytest.mark.ray
def test_submit_status_logs_cancel_ls_against_a_running_cluster(ray_head, tmp_path):
    address, env, _ = ray_head
    submitted = fabric("submit", "jobs/dags/quant_backtest.yaml", "--address", address, "--working-dir", ".",
                       env=env)
    assert submitted.returncode == 0, submitted.stderr
    submission_id = submitted.stdout.strip().splitlines()[-1]
    deadline = time.monotonic() + 120
    state = None
    while time.monotonic() < deadline:
        status = fabric("status", submission_id, "--address", address, "--json", env=env)
        assert status.returncode == 0, status.stderr
        state = json.loads(status.stdout)["state"]
        if state != "RUNNING":
            break
        time.sleep(1)
    assert state == "SUCCEEDED"
    logs = fabric("logs", submission_id, "--node", "make_data", "--address", address, env=env)
    assert logs.returncode == 0 and "attempt 1" in logs.stdout

    slow = tmp_path / "slow.yaml"
    slow.write_text("""
version: 1
pipeline_id: slow
nodes: [{id: wait, kind: python_task, entrypoint: "tests.nodes:sleeper", params: {seconds: 60}}]
""")
    second = fabric("submit", str(slow), "--address", address, "--working-dir", ".", env=env)
    slow_id = second.stdout.strip().splitlines()[-1]
    assert fabric("cancel", slow_id, "--address", address, env=env).returncode == 0
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = json.loads(fabric("status", slow_id, "--address", address, "--json", env=env).stdout)["state"]
        if state != "RUNNING":
            break
        time.sleep(1)
    assert state == "CANCELLED"
    listing = fabric("ls", "--address", address, env=env)
    assert submission_id in listing.stdout and slow_id in listing.stdout
    missing = fabric("status", "sub-nope", "--address", address, env=env)
    assert missing.returncode == 3 and "NOT_FOUND" in missing.stderr


@pytest.mark.ray
def test_fabric_up_serves_the_gateway_until_stopped(tmp_path):
    import httpx

    port, mlflow_port = _free_port(), _free_port()
    env = {**os.environ, "HOME": str(tmp_path), "FABRIC_HOME": str(tmp_path / "fabric")}
    env.pop("RAY_ADDRESS", None)
    env.pop("FABRIC_ADMISSION", None)  # the default: admission on, over the shipped scheduling config
    env.update({"FABRIC_GATEWAY_WRITE_RATE": "1", "FABRIC_GATEWAY_BURST_S": "2"})  # two writes at once, then 1/s
    for variable in ("FABRIC_GATEWAY_RATE", "FABRIC_GATEWAY_TEAM_WRITES", "RAY_SERVE_HTTP_PROXY_CALLBACK_IMPORT_PATH"):
        env.pop(variable, None)
    up = subprocess.Popen([*FABRIC, "up", "--port", str(port), "--num-cpus", "2", "--mlflow-port", str(mlflow_port)],
                          cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, start_new_session=True)
    try:
        token = None
        deadline = time.monotonic() + 120
        while token is None and time.monotonic() < deadline:
            line = up.stdout.readline()
            if not line and up.poll() is not None:
                break  # it exited: the assertion below says so at once
            if "admin token" in line:
                token = line.rsplit(" ", 1)[1].strip()
        assert token, "fabric up printed no admin token"
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            assert http.get("/healthz").status_code == 200
            assert http.get("/api/orch/queues", headers=headers).json()["admission"] is True
            spec = (REPO / "jobs/dags/quant_backtest.yaml").read_text()
            response = http.post("/api/orch/submit", headers=headers, json={"dag_spec": spec})
            assert response.status_code == 202, response.text
            submission_id = response.json()["submission_id"]
            state = "RUNNING"
            while state == "RUNNING" and time.monotonic() < deadline:
                state = http.get(f"/api/orch/status/{submission_id}", headers=headers).json()["state"]
                time.sleep(0.5)
            assert state == "SUCCEEDED"
            # A team's flood is refused by Serve's proxy itself (serve/proxy_guard.py): the replica never sees it.
            time.sleep(2)  # the write bucket full again: two writes
            flood = [http.post("/api/orch/cancel/sub-nope", headers=headers) for _ in range(3)]
            assert [r.status_code for r in flood] == [404, 404, 429], [r.text for r in flood]
            assert flood[2].headers["X-Fabric-Refused-By"] == "proxy" and flood[2].headers["Retry-After"] == "1"
            # Asked again at once on the same connection: held until its Retry-After is up, then judged afresh
            # (the bucket has a token again by then).
            again = http.post("/api/orch/cancel/sub-nope", headers=headers)
            assert again.status_code == 404 and again.elapsed.total_seconds() >= 0.8, (again, again.elapsed)
            counted = [line for line in http.get("/metrics").text.splitlines()
                       if line.startswith("fabric_gateway_requests_total{")]
            assert counted and all('status="429"' not in line for line in counted), counted  # the replica saw none
        # The MLflow tracking server `fabric up` started (ML nodes log to it), its store beside the registry's.
        assert httpx.get(f"http://127.0.0.1:{mlflow_port}/health", timeout=10).status_code == 200
        assert (tmp_path / "fabric" / "mlflow.db").exists()
    finally:
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(up.pid, signal.SIGKILL)
            up.wait(10)
            raise AssertionError("fabric up did not stop on SIGTERM") from None
    assert up.returncode == 0
    with pytest.raises(httpx.ConnectError):  # stopping `fabric up` stopped its tracking server too
        httpx.get(f"http://127.0.0.1:{mlflow_port}/health", timeout=5)


def test_audit_export_writes_the_events_as_parquet(tmp_path):
    import pyarrow.parquet as pq

    from fabric.record import Event, SqliteStore, SubmissionRecord

    with SqliteStore(tmp_path / "fabric.db") as store:
        store.add_submission(SubmissionRecord("s1", "p", {}, {}, "h", "r", 1.0, team="research"))
        store.append_events([Event("s1", "a", "PENDING", "QUEUED", 2.0), Event("s1", None, "RUNNING", "FAILED", 3.0)])
    env = {**os.environ, "FABRIC_HOME": str(tmp_path)}
    result = fabric("audit", "export", str(tmp_path / "audit.parquet"), env=env)
    assert result.returncode == 0, result.stderr
    table = pq.read_table(tmp_path / "audit.parquet")
    assert table.num_rows == 2 and table.column("target").to_pylist() == ["QUEUED", "FAILED"]
    assert set(table.column("team").to_pylist()) == {"research"}


def test_fabric_k8s_is_a_subcommand():
    dry = fabric("k8s", "submit", "jobs/dags/quant_backtest.yaml", "--dry-run")
    assert dry.returncode == 0, dry.stderr
    assert "kind: RayJob" in dry.stdout and "python -m jobs.run_dag" in dry.stdout
