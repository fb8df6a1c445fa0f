"""ML kinds on a real local Ray: Ray Train (DDP on 2 workers), resume after a killed training worker, a Tune
sweep, and what MLflow (SQLite under FABRIC_HOME) holds afterwards: tagged runs, the registered model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import free_port

pytestmark = [pytest.mark.ray, pytest.mark.timeout(240)]


def features_node(**params: Any) -> dict[str, Any]:
    return {"id": "features", "kind": "python_task", "entrypoint": "tests.ml_nodes:feature_table",
            "params": {"n_assets": 20, "n_days": 200, **params}, "outs": ["feature_table"],
            "resources": {"cpu": "500m"}}


def pipeline(pipeline_id: str, node: dict[str, Any], **top: Any) -> dict[str, Any]:
    return {"version": 1, "pipeline_id": pipeline_id, "nodes": [top.pop("features", features_node()), node],
            "edges": [{"from": "features", "to": node["id"]}], **top}


def mlflow_client(home: Path) -> Any:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{home.resolve() / 'mlflow.db'}")


def test_train_runs_ddp_logs_to_mlflow_and_the_model_loads(client, fabric_home):
    import mlflow

    import fabric.ml
    from fabric.ml.bilstm import BiLstmTrainer
    from fabric.ml.loop import LOOP_DEFAULTS, latest_checkpoint, load_trained
    from tests.ml_nodes import feature_table

    node = {"id": "train", "kind": "train", "ins": ["feature_table"], "outs": ["model_uri", "metrics_json"],
            "params": {"trainer": "bilstm", "epochs": 2, "hidden": 8, "seed": 5},
            "resources": {"cpu": "500m", "workers": 2}}
    submission = client.submit(pipeline("ml_ddp", node), runtime_params={"team": "quant-research"})
    status = submission.wait(200)
    assert status.state == "SUCCEEDED", (status.node("train").error, submission.logs("train")[-3000:])
    metrics = json.loads(submission.result("train", "metrics_json"))
    model_uri = submission.result("train", "model_uri")
    assert model_uri == metrics["model_uri"] == "models:/ml_ddp.train/1"
    assert [row["epoch"] for row in metrics["history"]] == [0, 1] and metrics["workers"] == 2
    assert metrics["resumed_from_epoch"] is None

    # A checkpoint per epoch, under the artifact store, keyed by submission and node.
    storage = fabric_home / "artifacts" / "checkpoints" / submission.id / "train"
    epochs = sorted(json.loads(p.read_text())["epoch"] for p in storage.rglob("fabric_state.json"))
    assert epochs == [0, 1]

    # MLflow: the run with its tags, its params and per-epoch metrics, and the registered model.
    mlflow_store = mlflow_client(fabric_home)
    (run,) = mlflow_store.search_runs([mlflow_store.get_experiment_by_name("ml_ddp").experiment_id],
                                      f"tags.submission_id = '{submission.id}'")
    assert {k: run.data.tags[k] for k in ("submission_id", "pipeline_id", "node_id", "team")} == {
        "submission_id": submission.id, "pipeline_id": "ml_ddp", "node_id": "train", "team": "quant-research"}
    assert run.info.status == "FINISHED" and run.info.run_id == metrics["mlflow_run_id"]
    assert run.data.params["epochs"] == "2" and run.data.params["hidden"] == "8"
    val_losses = mlflow_store.get_metric_history(run.info.run_id, "val_loss")
    assert [m.step for m in val_losses] == [0, 1]
    assert val_losses[-1].value == pytest.approx(metrics["final"]["val_loss"])
    version = mlflow_store.get_model_version("ml_ddp.train", "1")
    assert version.run_id == run.info.run_id and version.tags["submission_id"] == submission.id

    # model_uri loads with mlflow.pyfunc and predicts what the last checkpoint's model predicts.
    params = {**LOOP_DEFAULTS, **BiLstmTrainer.defaults, "hidden": 8}
    data = BiLstmTrainer().prepare({"t": feature_table(n_assets=20, n_days=200)}, params)
    loaded = fabric.ml.load_model(model_uri, home=str(fabric_home))
    assert isinstance(loaded, mlflow.pyfunc.PyFuncModel)
    predicted = np.asarray(loaded.predict(data.x_val))
    import torch

    reference, _ = load_trained(Path(latest_checkpoint(str(storage))[0]))
    with torch.no_grad():
        expected = reference(torch.from_numpy(data.x_val)).numpy()
    assert predicted.shape == (len(data.x_val),) and np.isfinite(predicted).all()
    np.testing.assert_allclose(predicted, expected, rtol=1e-5, atol=1e-7)

    # `mlflow ui` on the default store shows the run, its tags, and the registered model.
    shown = _ask_mlflow_ui(fabric_home, run.info.run_id)
    assert shown["run"]["run"]["data"]["tags"]
    tags = {t["key"]: t["value"] for t in shown["run"]["run"]["data"]["tags"]}
    assert tags["submission_id"] == submission.id and tags["team"] == "quant-research"
    assert shown["model"]["registered_model"]["latest_versions"][0]["run_id"] == run.info.run_id


def _ask_mlflow_ui(home: Path, run_id: str) -> dict[str, Any]:
    """Start `mlflow ui` on the default store (as docs/ml.md says), ask its REST API, stop it by PID."""
    port = free_port()
    ui = subprocess.Popen([str(Path(sys.executable).with_name("mlflow")), "ui", "--port", str(port), "--workers", "1",
                           "--host", "127.0.0.1", "--backend-store-uri", f"sqlite:///{home.resolve() / 'mlflow.db'}"],
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}/api/2.0/mlflow"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/runs/get?run_id={run_id}", timeout=5) as response:
                    run = json.loads(response.read())
                break
            except OSError:
                if time.monotonic() > deadline or ui.poll() is not None:
                    raise
                time.sleep(0.5)
        query = urllib.parse.urlencode({"name": "ml_ddp.train"})
        with urllib.request.urlopen(f"{base}/registered-models/get?{query}", timeout=5) as response:
            model = json.loads(response.read())
        return {"run": run, "model": model}
    finally:
        os.killpg(ui.pid, signal.SIGTERM)
        try:
            ui.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(ui.pid, signal.SIGKILL)


@pytest.mark.parametrize("max_failures", [0, 1], ids=["fabric-retry", "ray-train-restart"])
def test_a_killed_training_worker_resumes_from_the_last_checkpoint(client, fabric_home, max_failures):
    """max_failures 0: the attempt fails and the fabric's retry resumes; 1: Ray Train restarts its worker
    group inside the attempt. Either way training restarts at the epoch the worker was killed in."""
    node = {"id": "train", "kind": "ray_job", "ins": ["feature_table"], "outs": ["model_uri", "metrics_json"],
            "params": {"trainer": "bilstm", "epochs": 4, "hidden": 24, "batch_size": 16, "max_failures": max_failures},
            "resources": {"cpu": "1", "workers": 1}, "slo": {"retry": {"max_attempts": 2, "backoff_sec": 0}}}
    spec = pipeline(f"ml_resume_{max_failures}", node, features=features_node(n_assets=30, n_days=260))
    submission = client.submit(spec, runtime_params={"team": "quant-research"})
    heartbeat = fabric_home / "runs" / submission.id / "train" / "train-worker-0.json"
    deadline = time.monotonic() + 150
    beat: dict[str, Any] = {}
    while time.monotonic() < deadline:  # wait until the worker is well inside epoch 2
        try:
            beat = json.loads(heartbeat.read_text())
        except (OSError, ValueError):
            beat = {}
        if beat.get("epoch") == 2 and beat.get("batch", 0) >= 3 and not beat.get("done"):
            break
        assert submission.status().state == "RUNNING", submission.status()
        time.sleep(0.05)
    else:
        pytest.fail(f"training never reached epoch 2; last heartbeat {beat}")
    killed_epoch, killed_pid = beat["epoch"], beat["pid"]
    assert killed_pid != os.getpid()
    os.kill(killed_pid, signal.SIGKILL)

    status = submission.wait(200)
    node_status = status.node("train")
    assert status.state == "SUCCEEDED", (node_status.error, submission.logs("train")[-3000:])
    metrics = json.loads(submission.result("train", "metrics_json"))
    storage = fabric_home / "artifacts" / "checkpoints" / submission.id / "train"

    def checkpointed(run: str) -> list[int]:
        return [json.loads(p.read_text())["epoch"] for p in sorted((storage / run).rglob("fabric_state.json"))]

    if max_failures == 0:
        assert node_status.attempts == 2 and node_status.history[0].outcome == "RETRYING"
        # The kill landed mid-epoch: attempt 1 checkpointed every epoch before the one it was killed in,
        # and attempt 2 restarted from that epoch (not from 0, not past it) and finished the rest.
        assert checkpointed("attempt-1") == list(range(killed_epoch))
        assert checkpointed("attempt-2") == list(range(killed_epoch, 4))
        assert "resumed from the checkpoint of epoch 1" in submission.logs("train")
    else:
        assert node_status.attempts == 1  # Ray Train's restart stays inside the attempt
        assert checkpointed("attempt-1") == list(range(4))  # in checkpoint order: no epoch twice
    assert metrics["resumed_from_epoch"] == killed_epoch
    assert [row["epoch"] for row in metrics["history"]] == [0, 1, 2, 3]
    final_beat = json.loads(heartbeat.read_text())
    assert final_beat["resumed_from"] == killed_epoch and final_beat["pid"] != killed_pid and final_beat["done"]

    store = mlflow_client(fabric_home)
    runs = store.search_runs([store.get_experiment_by_name(f"ml_resume_{max_failures}").experiment_id],
                             f"tags.submission_id = '{submission.id}'", order_by=["attributes.start_time ASC"])
    expected = [("1", "FAILED"), ("2", "FINISHED")] if max_failures == 0 else [("1", "FINISHED")]
    assert [(r.data.tags["fabric.attempt"], r.info.status) for r in runs] == expected


def test_tune_sweeps_a_search_space_and_logs_every_trial(client, fabric_home):
    node = {"id": "sweep", "kind": "tune", "ins": ["feature_table"], "outs": ["best_config", "best_metrics"],
            "params": {"trainer": "bilstm", "epochs": 2, "metric": "val_loss", "mode": "min",
                       "search_space": {"hidden": {"grid": [4, 8]}, "lr": {"choice": [0.001, 0.01]}},
                       "num_samples": 1},
            "resources": {"cpu": "500m", "workers": 2}}
    submission = client.submit(pipeline("ml_sweep", node), runtime_params={"team": "quant-research"})
    status = submission.wait(200)
    assert status.state == "SUCCEEDED", (status.node("sweep").error, submission.logs("sweep")[-3000:])
    best_config = submission.result("sweep", "best_config")
    best_metrics = submission.result("sweep", "best_metrics")
    assert set(best_config) == {"hidden", "lr"} and best_config["hidden"] in (4, 8)
    store = mlflow_client(fabric_home)
    experiment = store.get_experiment_by_name("ml_sweep").experiment_id
    runs = store.search_runs([experiment], f"tags.submission_id = '{submission.id}'")
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    trials = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    assert len(trials) == 2  # the grid over hidden, one lr sample each
    assert all(t.data.tags["team"] == "quant-research" and t.data.tags["node_id"] == "sweep" for t in trials)
    trial_losses = [store.get_metric_history(t.info.run_id, "val_loss")[-1].value for t in trials]
    assert best_metrics["val_loss"] == pytest.approx(min(trial_losses))
    best_trial = trials[int(np.argmin(trial_losses))]
    assert int(best_trial.data.params["hidden"]) == best_config["hidden"]
    assert parent.data.params["best.hidden"] == str(best_config["hidden"])


def test_llm_generate_and_rag_on_ray_data_with_tiny_models(client, fabric_home, tiny_lm, tiny_encoder):
    """llm_generate on an actor pool of 2 (merges counted, the same completions as one local generator over
    the same batches with the same seed), then embed -> rag_index -> rag_query with generation."""
    import pyarrow as pa

    from fabric.ml.genai.generate import Generator
    from fabric.ml.genai.pipeline import blocks
    from jobs.genai import data

    sampling = {"max_new_tokens": 5, "temperature": 1.2, "seed": 3}
    nodes = [
        {"id": "prompts", "kind": "python_task", "entrypoint": "jobs.genai.data:prompts", "outs": ["prompts"],
         "params": {"n": 24, "distinct": 6}},
        {"id": "gen", "kind": "llm_generate", "ins": ["prompts"], "outs": ["completions"],
         "resources": {"cpu": "500m", "workers": 2},
         "params": {"model": str(tiny_lm), "batch_size": 4, "sampling": sampling}},
        {"id": "files", "kind": "python_task", "entrypoint": "tests.nodes:prompt_files", "outs": ["files"],
         "params": {"directory": str(fabric_home / "prompt-files"), "n": 30, "distinct": 30}},
        {"id": "gen_files", "kind": "llm_generate", "ins": ["files"], "outs": ["completions"],
         "resources": {"cpu": "500m", "workers": 2},
         "params": {"model": str(tiny_lm), "batch_size": 4, "sampling": {"max_new_tokens": 3}}},
        {"id": "docs", "kind": "python_task", "entrypoint": "jobs.genai.data:documents", "outs": ["documents"]},
        {"id": "embed", "kind": "embed", "ins": ["documents"], "outs": ["chunks"],
         "params": {"model": str(tiny_encoder), "chunk_size": 400, "chunk_overlap": 0}},
        {"id": "index", "kind": "rag_index", "ins": ["chunks"], "outs": ["index"]},
        {"id": "questions", "kind": "python_task", "entrypoint": "jobs.genai.data:questions", "ins": ["documents"],
         "outs": ["questions"]},
        {"id": "ask", "kind": "rag_query", "ins": ["index", "questions"], "outs": ["answers"],
         "params": {"model": str(tiny_encoder), "top_k": 3,
                    "generate": {"model": str(tiny_lm), "sampling": {"max_new_tokens": 4}}}}]
    edges = [{"from": "prompts", "to": "gen"}, {"from": "files", "to": "gen_files"},
             {"from": "docs", "to": "embed"}, {"from": "embed", "to": "index"},
             {"from": "docs", "to": "questions"}, {"from": "index", "to": "ask"}, {"from": "questions", "to": "ask"}]
    started = time.monotonic()
    submission = client.submit({"version": 1, "pipeline_id": "genai_e2e", "nodes": nodes, "edges": edges})
    status = submission.wait(200)
    assert status.state == "SUCCEEDED", {n["id"]: (status.node(n["id"]).state, status.node(n["id"]).error,
                                                   submission.logs(n["id"])[-2000:]) for n in nodes
                                         if status.node(n["id"]).state != "SUCCEEDED"}
    print(f"genai e2e: {time.monotonic() - started:.1f} s", {n["id"]: status.node(n["id"]).duration for n in nodes})
    out = submission.result("gen", "completions")
    prompts = data.prompts(24, 6)
    assert out.num_rows == 24 and out.column("id").to_pylist() == list(range(24))
    local = Generator(str(tiny_lm), sampling)
    expected = pa.concat_tables([local(batch.slice(i, 4)) for batch in blocks(prompts, 4, 2)
                                 for i in range(0, batch.num_rows, 4)])
    assert out.column("completion").to_pylist() == expected.column("completion").to_pylist()
    assert out.column("merged").to_pylist() == expected.column("merged").to_pylist()
    metrics = json.loads(client.artifact(submission.id, "gen", "metrics.json"))
    assert metrics["merged"] == sum(expected.column("merged").to_pylist()) > 0
    assert metrics["generations"] + metrics["merged"] == 24 and metrics["replicas"] == 2
    streamed = submission.result("gen_files", "completions")  # Parquet files in, read by Ray Data as a stream
    assert streamed.column("id").to_pylist() == list(range(30))  # in input order, across both files
    assert streamed.column("prompt").to_pylist() == data.prompts(30, 30).column("prompt").to_pylist()
    responses = json.loads(client.artifact(submission.id, "gen_files", "responses.json"))
    assert [r["completion"] for r in responses] == streamed.column("completion").to_pylist()
    assert json.loads(client.artifact(submission.id, "gen_files", "metrics.json"))["prompts"] == 30
    answers = submission.result("ask", "answers")
    assert answers.num_rows == 4 and all(len(hit) == 3 for hit in answers.column("doc_ids").to_pylist())
    assert data.recall(answers)["recall_at_k"] == 1.0
    assert set(answers.column("finish_reason").to_pylist()) <= {"stop", "length"}


def test_finetune_sft_on_two_workers_resumes_after_a_killed_worker(client, fabric_home, tiny_lm):
    """SFT with TRL on 2 Ray Train workers (gloo, a placement group): a worker SIGKILLed after a checkpoint makes
    Ray Train restart the group (max_failures 1), which resumes at that checkpoint's step; the loss falls on a
    memorisable set; the model is saved for llm_generate and registered in MLflow (unit tests load it)."""
    nodes = [
        {"id": "pairs", "kind": "python_task", "entrypoint": "jobs.genai.data:sft_pairs", "outs": ["pairs"],
         "params": {"n": 8, "repeat": 2}, "resources": {"cpu": "500m"}},
        {"id": "tune", "kind": "finetune", "ins": ["pairs"], "outs": ["model_uri", "metrics_json"],
         "params": {"model": str(tiny_lm), "method": "sft", "epochs": 4, "lr": 3e-3, "batch_size": 2,
                    "checkpoint_every": 4, "lr_scheduler": "constant", "max_failures": 1},
         "resources": {"cpu": "1", "workers": 2}}]
    started = time.monotonic()
    submission = client.submit({"version": 1, "pipeline_id": "ft_sft", "nodes": nodes})
    heartbeat = fabric_home / "runs" / submission.id / "tune" / "train-worker-1.json"
    deadline = time.monotonic() + 150
    beat: dict[str, Any] = {}
    while time.monotonic() < deadline:  # wait until rank 1 is past the first checkpoint (step 4)
        try:
            beat = json.loads(heartbeat.read_text())
        except (OSError, ValueError):
            beat = {}
        if beat.get("step", 0) >= 5 and not beat.get("done"):
            break
        assert submission.status().state == "RUNNING", submission.status()
        time.sleep(0.02)
    else:
        pytest.fail(f"fine-tuning never reached step 5; last heartbeat {beat}")
    os.kill(beat["pid"], signal.SIGKILL)

    status = submission.wait(200)
    print(f"finetune e2e: {time.monotonic() - started:.1f} s", {n["id"]: status.node(n["id"]).duration for n in nodes})
    node_status = status.node("tune")
    assert status.state == "SUCCEEDED", (node_status.error, submission.logs("tune")[-3000:])
    assert node_status.attempts == 1  # Ray Train's restart stays inside the attempt
    metrics = json.loads(submission.result("tune", "metrics_json"))
    storage = fabric_home / "artifacts" / "checkpoints" / submission.id / "tune"
    markers = [json.loads(p.read_text()) for p in storage.rglob("fabric_checkpoint.json")]
    resumed = metrics["resumed_from_step"]  # the newest checkpoint complete before the kill
    assert resumed is not None and resumed % 4 == 0 and 4 <= resumed <= beat["step"]
    assert sorted(m["step"] for m in markers)[-2:] == [12, 16]  # the newest two are kept
    final_beat = json.loads(heartbeat.read_text())
    assert final_beat["resumed_from"] == resumed and final_beat["pid"] != beat["pid"] and final_beat["done"]
    assert f"resumed from the checkpoint of step {resumed}" in submission.logs("tune")
    assert [row["step"] for row in metrics["history"]] == list(range(1, 17)) and metrics["steps"] == 16
    assert metrics["final_loss"] < 0.8 * metrics["first_loss"]  # a memorisable set: the loss falls
    assert metrics["model_uri"] == submission.result("tune", "model_uri") == "models:/ft_sft.tune/1"
    saved = fabric_home / "artifacts" / "models" / submission.id / "tune"
    assert (saved / "model.safetensors").is_file() and not (saved / "optimizer.pt").exists()
    store = mlflow_client(fabric_home)
    version = store.get_model_version("ft_sft.tune", "1")
    assert version.tags["submission_id"] == submission.id and version.run_id == metrics["mlflow_run_id"]
