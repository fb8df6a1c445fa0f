"""MLflow for a cluster: the head's `mlflow server` (fabric.ml.server, as `fabric up` starts it) with its
artifacts in an S3 artifact store (moto on loopback); a `train` node logs to it over HTTP, and the MLflow
client over HTTP finds the run, the registered model, and the model's files in S3."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from fabric.ml.server import TrackingServer, start_server
from tests.conftest import REPO, free_port
from tests.ray.test_ml_train import pipeline
from tests.s3_server import BUCKET, keys, moto_server, s3_env

pytestmark = [pytest.mark.ray, pytest.mark.timeout(240)]
STORE = f"s3://{BUCKET}/cluster"


@pytest.fixture(scope="module")
def tracking(fabric_home: Path) -> Iterator[tuple[str, TrackingServer]]:
    with moto_server() as endpoint:
        env = {**s3_env(endpoint), "FABRIC_ARTIFACTS": STORE}
        saved = {name: os.environ.get(name) for name in [*env, "FABRIC_MLFLOW_URI"]}
        os.environ.update(env)
        server = start_server(str(fabric_home), STORE, port=free_port(), timeout=180)
        os.environ["FABRIC_MLFLOW_URI"] = server.uri  # what `fabric up` hands the Ray it starts
        try:
            yield endpoint, server
        finally:
            server.stop()
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


@pytest.fixture(scope="module")
def client(fabric_home: Path, tracking: tuple[str, TrackingServer]) -> Iterator[object]:
    import ray

    import fabric as fb

    os.chdir(REPO)
    yield fb.connect("local", num_cpus=2, home=str(fabric_home))
    ray.shutdown()


def test_a_train_node_logs_to_the_tracking_server_and_its_model_lands_in_s3(client, tracking, fabric_home):
    from mlflow import MlflowClient

    endpoint, server = tracking
    node = {"id": "train", "kind": "train", "ins": ["feature_table"], "outs": ["model_uri", "metrics_json"],
            "params": {"trainer": "bilstm", "epochs": 1, "hidden": 4, "seed": 3},
            "resources": {"cpu": "1", "workers": 1}}
    submission = client.submit(pipeline("ml_served", node), runtime_params={"team": "quant-research"})
    status = submission.wait(200)
    assert status.state == "SUCCEEDED", (status.node("train").error, submission.logs("train")[-3000:])
    metrics = json.loads(submission.result("train", "metrics_json"))

    over_http = MlflowClient(tracking_uri=server.uri)
    experiment = over_http.get_experiment_by_name("ml_served")
    assert experiment.artifact_location == "mlflow-artifacts:/ml_served"  # uploads go through the server
    (run,) = over_http.search_runs([experiment.experiment_id], f"tags.submission_id = '{submission.id}'")
    assert run.info.run_id == metrics["mlflow_run_id"] and run.info.status == "FINISHED"
    assert run.data.tags["team"] == "quant-research" and run.data.params["hidden"] == "4"
    version = over_http.get_model_version("ml_served.train", "1")
    assert version.run_id == run.info.run_id

    # The model's files are in the artifact store (S3), under the server's artifacts destination.
    stored = keys(endpoint, prefix="cluster/mlflow/")
    assert any(key.endswith("/MLmodel") for key in stored), stored[:20]
    assert not (fabric_home / "mlartifacts").exists(), "no MLflow artifact may land on a node's disk"
    import fabric.ml

    # Downloaded via the server (named: this process's settings were read before the test set FABRIC_MLFLOW_URI).
    loaded = fabric.ml.load_model(metrics["model_uri"], uri=server.uri)
    assert loaded.metadata.run_id == run.info.run_id
