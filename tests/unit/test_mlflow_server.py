"""The head's MLflow tracking server (fabric/ml/server.py): its command line, the settings nodes get with it, the
same server in cluster.yaml and k8s/, and a real server whose artifacts go to S3 (moto) as nodes upload them."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from fabric.ml.server import artifacts_destination, server_command, start_server
from fabric.settings import Settings
from tests.conftest import REPO, free_port
from tests.s3_server import BUCKET, keys, moto_server, s3_env

pytestmark = pytest.mark.timeout(300)  # a real mlflow server boots in 10-60 s on a busy 2-core machine


def test_the_command_keeps_the_store_beside_the_registrys_and_the_artifacts_in_the_artifact_store(tmp_path):
    command = server_command(str(tmp_path), "s3://bucket/art/", "0.0.0.0", 5001)
    assert command[1:6] == ["server", "--host", "0.0.0.0", "--port", "5001"]
    assert command[command.index("--backend-store-uri") + 1] == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    assert command[command.index("--artifacts-destination") + 1] == "s3://bucket/art/mlflow"
    assert "--serve-artifacts" in command and "--allowed-hosts" not in command
    assert server_command("/h", "/a", allowed_hosts="svc:*")[-2:] == ["--allowed-hosts", "svc:*"]


def test_with_a_tracking_server_new_experiments_upload_through_it(tmp_path):
    served = Settings.from_env({"FABRIC_MLFLOW_URI": "http://head:5000"}, home=str(tmp_path))
    assert served.mlflow_uri == "http://head:5000" and served.mlflow_artifacts == "mlflow-artifacts:/"
    assert Settings.from_env({"MLFLOW_TRACKING_URI": "https://m"}, home=str(tmp_path)).mlflow_artifacts == (
        "mlflow-artifacts:/")
    local = Settings.from_env({}, home=str(tmp_path))  # `fabric run` alone: the file store stays the default
    assert local.mlflow_uri.startswith("sqlite:///") and local.mlflow_artifacts == str(tmp_path.resolve() /
                                                                                       "mlartifacts")
    chosen = {"FABRIC_MLFLOW_URI": "http://head:5000", "FABRIC_MLFLOW_ARTIFACTS": "s3://b/ml"}
    assert Settings.from_env(chosen, home=str(tmp_path)).mlflow_artifacts == "s3://b/ml"


def test_cluster_yaml_runs_the_server_on_the_head_and_points_every_node_at_it():
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    head = " ".join(config["head_start_ray_commands"])
    assert "python -m fabric.ml.server --host 0.0.0.0 --port 5000" in head
    assert "FABRIC_MLFLOW_URI=http://127.0.0.1:5000" in head
    assert any(c.startswith("FABRIC_MLFLOW_URI=http://$RAY_HEAD_IP:5000 ray start")
               for c in config["worker_start_ray_commands"])


@pytest.mark.parametrize(("manifest", "pod_path", "service"), [
    ("raycluster.yaml", ("spec",), "fabric-head-svc"),
    ("rayservice.yaml", ("spec", "rayClusterConfig"), "fabric-gateway-head-svc")])
def test_k8s_heads_run_the_server_as_a_sidecar_and_workers_log_to_it(manifest, pod_path, service):
    cluster = yaml.safe_load((REPO / "k8s" / "base" / manifest).read_text())
    for key in pod_path:
        cluster = cluster[key]
    head, sidecar = cluster["headGroupSpec"]["template"]["spec"]["containers"]
    assert head["name"] == "ray-head" and sidecar["name"] == "mlflow"
    assert sidecar["command"][:3] == ["python", "-m", "fabric.ml.server"] and "5000" in sidecar["command"]
    assert f"{service}:*" in sidecar["command"][sidecar["command"].index("--allowed-hosts") + 1]
    assert {"containerPort": 5000, "name": "mlflow"} in head["ports"]  # so the head Service exposes it
    env = {e["name"]: e.get("value") for e in head["env"]}  # FABRIC_STORE comes from a Secret (valueFrom)
    assert env["FABRIC_MLFLOW_URI"] == "http://127.0.0.1:5000"
    assert {e["value"] for e in sidecar["env"] if e["name"] == "FABRIC_HOME"} == {env["FABRIC_HOME"]}
    home_mounts = {m["mountPath"] for m in sidecar["volumeMounts"] if m["name"] == "fabric-home"}
    assert home_mounts == {env["FABRIC_HOME"]}
    for group in cluster["workerGroupSpecs"]:
        [worker] = group["template"]["spec"]["containers"]
        assert {"name": "FABRIC_MLFLOW_URI", "value": f"http://{service}:5000"} in worker["env"], group["groupName"]


def test_a_real_server_stores_runs_beside_the_registry_and_uploaded_artifacts_in_s3(tmp_path: Path):
    import mlflow

    from fabric.ml.tracking import experiment_id

    home, store = tmp_path / "home", f"s3://{BUCKET}/unit-mlflow"
    with moto_server() as endpoint:
        saved = {name: os.environ.get(name) for name in [*s3_env(endpoint), "FABRIC_MLFLOW_URI"]}
        os.environ.update(s3_env(endpoint))
        server = start_server(str(home), store, port=free_port(), timeout=240)
        try:
            os.environ["FABRIC_MLFLOW_URI"] = server.uri  # what a node gets: only the server's URL
            client = mlflow.MlflowClient(tracking_uri=server.uri)
            experiment = experiment_id(client, "served", str(home))
            assert client.get_experiment(experiment).artifact_location == "mlflow-artifacts:/served"
            run = client.create_run(experiment)
            (tmp_path / "model.txt").write_text("weights")
            client.log_artifact(run.info.run_id, str(tmp_path / "model.txt"), "model")
            client.set_terminated(run.info.run_id)
            stored = keys(endpoint, prefix="unit-mlflow/mlflow/")
            assert stored == [f"unit-mlflow/mlflow/served/{run.info.run_id}/artifacts/model/model.txt"]
            assert (home / "mlflow.db").exists()  # the backend store, beside the registry's
            fetched = client.download_artifacts(run.info.run_id, "model/model.txt", str(tmp_path / "out"))
            assert Path(fetched).read_text() == "weights"
        finally:
            server.stop()
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value
    assert server.process.poll() is not None
    assert artifacts_destination("/x/") == "/x/mlflow"


def test_a_temporary_tracking_store_leaves_the_process_and_its_environment_as_they_were(monkeypatch, tmp_path):
    """mlflow.set_*_uri export MLFLOW_*_URI to os.environ; a Ray started later would inherit a stale store
    (a train node then registered its model in another test's SQLite file)."""
    import mlflow

    from fabric.ml.tracking import _tracking

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    before = mlflow.get_tracking_uri()
    store = f"sqlite:///{tmp_path}/m.db"
    with _tracking(store):
        assert mlflow.get_registry_uri() == store and os.environ["MLFLOW_REGISTRY_URI"] == store
    assert "MLFLOW_TRACKING_URI" not in os.environ and "MLFLOW_REGISTRY_URI" not in os.environ
    assert mlflow.get_tracking_uri() == before
    assert mlflow.MlflowClient(tracking_uri="http://127.0.0.1:9")._registry_uri == "http://127.0.0.1:9"


def test_with_the_record_on_postgresql_the_backend_is_its_own_schema_and_the_password_stays_off_argv(tmp_path):
    from fabric.ml.server import backend_store, server_env

    url = "postgresql://fabric:s3cret@db.internal:5432/fabric?sslmode=require"
    assert backend_store(str(tmp_path), url) == ("postgresql+psycopg://fabric:s3cret@db.internal:5432/fabric"
                                                 "?sslmode=require&options=-csearch_path%3Dmlflow")
    command = server_command(str(tmp_path), "/a", store=url)
    assert "--backend-store-uri" not in command and not any("s3cret" in part for part in command)
    no_jobs = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    assert server_env(str(tmp_path), url) == {**no_jobs, "MLFLOW_BACKEND_STORE_URI": backend_store(str(tmp_path), url)}
    assert server_env(str(tmp_path), "sqlite") == no_jobs


def test_a_real_server_on_the_registrys_postgresql_keeps_its_tables_in_schema_mlflow(tmp_path, postgres_url):
    import mlflow

    from fabric.record.postgres import connect

    server = start_server(str(tmp_path / "home"), str(tmp_path / "artifacts"), port=free_port(), timeout=240,
                          store=postgres_url)
    try:
        client = mlflow.MlflowClient(tracking_uri=server.uri)
        run = client.create_run(client.create_experiment("on-pg"))
        client.log_metric(run.info.run_id, "sharpe", 1.5)
        assert client.get_run(run.info.run_id).data.metrics == {"sharpe": 1.5}
    finally:
        server.stop()
    assert not (tmp_path / "home" / "mlflow.db").exists()
    with connect(postgres_url) as conn:
        schemas = {row[0] for row in conn.execute(
            "SELECT table_schema FROM information_schema.tables WHERE table_name = 'runs'").fetchall()}
        assert schemas == {"mlflow"}  # never beside fabric's tables in public
        (count,) = conn.execute("SELECT count(*) FROM mlflow.metrics WHERE key = 'sharpe'").fetchone()
        assert count == 1


def test_the_secrets_of_a_k8s_head_are_a_mounted_secret_per_scope_under_fabric_secrets_dir_and_workers_get_none():
    for manifest, pod_path in [("raycluster.yaml", ("spec",)), ("rayservice.yaml", ("spec", "rayClusterConfig"))]:
        cluster = yaml.safe_load((REPO / "k8s" / "base" / manifest).read_text())
        for key in pod_path:
            cluster = cluster[key]
        pod = cluster["headGroupSpec"]["template"]["spec"]
        head, sidecar = pod["containers"]
        secrets_dir = {e["name"]: e.get("value") for e in head["env"]}["FABRIC_SECRETS_DIR"]
        mounts = {m["name"]: m for m in head["volumeMounts"]}
        volumes = {v["name"]: v for v in pod["volumes"]}
        scoped = [m for m in mounts.values() if m["mountPath"].startswith(secrets_dir + "/")]
        assert scoped, manifest
        for mount in scoped:
            assert mount["readOnly"] and "secret" in volumes[mount["name"]], manifest
            assert volumes[mount["name"]]["secret"]["optional"] is True  # the head starts without it
        assert "FABRIC_STORE" in {e["name"] for e in sidecar["env"]}  # MLflow beside the record on PostgreSQL
        for group in cluster["workerGroupSpecs"]:
            spec = group["template"]["spec"]
            assert not any("secret" in v for v in spec.get("volumes", [])), (manifest, group["groupName"])


def test_cluster_yamls_tracking_server_reads_the_same_store_url_as_the_registry():
    config = yaml.safe_load((REPO / "cluster.yaml").read_text())
    server = next(c for c in config["head_start_ray_commands"] if "fabric.ml.server" in c)
    registry = next(c for c in config["head_start_ray_commands"] if "ray start --head" in c)
    store = "FABRIC_STORE=$(cat /data/fabric/store-url 2>/dev/null || echo sqlite)"
    assert store in server and store in registry
