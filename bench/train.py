"""Training overhead: the same BiLSTM training through the fabric and through Ray Train called directly.

    python -m bench.train [--repeats 2] [--epochs 4] [--workers 2]

Both sides train the same model (fabric.ml.bilstm_model.BiLSTM) on the same windows of the same
feature table, with the same workers, epochs, batch size and a checkpoint every epoch, then log the
run and register the model in MLflow (SQLite). The anchor is a hand-written Ray Train script that does
exactly that; the fabric side is a two-node DAG (features -> train) submitted and waited for. Runs
alternate (anchor, fabric, anchor, ...) after one warm-up each; the medians and their ratio are printed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import ray

import fabric as fb
from fabric.ml.bilstm import BiLstmTrainer
from fabric.ml.loop import LOOP_DEFAULTS

MODEL = {"hidden": 32, "seq_len": 10}


def anchor_worker(config: dict[str, Any]) -> None:
    """A plain Ray Train loop, as a user would write it: DDP, Adam, report + checkpoint each epoch."""
    import numpy as np
    import ray.train
    import ray.train.torch
    import torch

    from fabric.ml.bilstm_model import BiLSTM

    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    data = ray.get(config["data"])
    meta = data.meta
    torch.manual_seed(config["seed"])
    model = BiLSTM(meta["n_features"], hidden=config["hidden"], x_mean=meta["x_mean"], x_std=meta["x_std"],
                   y_mean=meta["y_mean"], y_std=meta["y_std"])
    net = ray.train.torch.prepare_model(model) if world > 1 else model
    optimizer = torch.optim.Adam(model.parameters(), lr=config["lr"])
    per_rank = len(data.x_train) // world
    x = torch.from_numpy(np.ascontiguousarray(data.x_train[rank::world][:per_rank]))
    y = torch.from_numpy(np.ascontiguousarray(data.y_train[rank::world][:per_rank]))
    x_val, y_val = torch.from_numpy(data.x_val), torch.from_numpy(data.y_val)
    scale = meta["y_std"] ** 2
    for epoch in range(config["epochs"]):
        net.train()
        order = torch.randperm(per_rank, generator=torch.Generator().manual_seed(config["seed"] + epoch))
        total, batches = 0.0, 0
        for begin in range(0, per_rank, config["batch_size"]):
            idx = order[begin:begin + config["batch_size"]]
            optimizer.zero_grad()
            loss = torch.nn.functional.mse_loss(net(x[idx]), y[idx]) / scale
            loss.backward()
            optimizer.step()
            total, batches = total + loss.item(), batches + 1
        net.eval()
        with torch.no_grad():
            val_loss = float(torch.nn.functional.mse_loss(net(x_val), y_val) / scale)
        metrics = {"epoch": epoch, "train_loss": total / batches, "val_loss": val_loss}
        with tempfile.TemporaryDirectory() as tmp:
            checkpoint = None
            if rank == 0:
                torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch},
                           Path(tmp) / "state.pt")
                checkpoint = ray.train.Checkpoint.from_directory(tmp)
            ray.train.report(metrics, checkpoint=checkpoint)


def run_anchor(args: argparse.Namespace, feature_fn: Any, home: Path, index: int) -> float:
    import mlflow
    import torch
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from fabric.ml.bilstm_model import BiLSTM

    start = time.perf_counter()
    table = ray.get(ray.remote(feature_fn).options(num_cpus=0.5).remote(**FEATURES))
    params = {**LOOP_DEFAULTS, **BiLstmTrainer.defaults, **MODEL, "epochs": args.epochs, "batch_size": args.batch}
    data = BiLstmTrainer().prepare({"feature_table": table}, params)
    config = {**params, "data": ray.put(data)}
    trainer = TorchTrainer(anchor_worker, train_loop_config=config,
                           scaling_config=ScalingConfig(num_workers=args.workers,
                                                        resources_per_worker={"CPU": args.cpu}),
                           run_config=RunConfig(name=f"anchor-{index}", storage_path=str(home / "ckpt")))
    result = trainer.fit()
    mlflow.set_tracking_uri(f"sqlite:///{home / 'mlflow.db'}")
    if mlflow.get_experiment_by_name("anchor") is None:
        mlflow.create_experiment("anchor", artifact_location=str(home / "mlartifacts"))
    mlflow.set_experiment("anchor")
    with mlflow.start_run(tags={"submission_id": f"anchor-{index}", "node_id": "train"}):
        mlflow.log_params({k: json.dumps(v) for k, v in params.items()})
        for row in result.metrics_dataframe.to_dict("records"):
            mlflow.log_metrics({"train_loss": row["train_loss"], "val_loss": row["val_loss"]}, step=int(row["epoch"]))
        meta = data.meta
        model = BiLSTM(meta["n_features"], hidden=params["hidden"], x_mean=meta["x_mean"], x_std=meta["x_std"],
                       y_mean=meta["y_mean"], y_std=meta["y_std"])
        with result.checkpoint.as_directory() as directory:
            model.load_state_dict(torch.load(Path(directory) / "state.pt", weights_only=False)["model"])
        model.eval()
        with torch.no_grad():
            signature = mlflow.models.infer_signature(data.x_val[:2], model(torch.from_numpy(data.x_val[:2])).numpy())
        mlflow.pytorch.log_model(model, name="model", signature=signature, registered_model_name="anchor.train",
                                 serialization_format="pickle", pip_requirements=["torch"])
    return time.perf_counter() - start


FEATURES = {"n_assets": 40, "n_days": 400, "seed": 3}


def fabric_spec(args: argparse.Namespace) -> dict[str, Any]:
    return {"version": 1, "pipeline_id": "bench_train", "nodes": [
        {"id": "features", "kind": "python_task", "entrypoint": "tests.ml_nodes:feature_table", "params": FEATURES,
         "outs": ["feature_table"], "resources": {"cpu": "500m"}},
        {"id": "train", "kind": "train", "ins": ["feature_table"], "outs": ["model_uri", "metrics_json"],
         "params": {"trainer": "bilstm", **MODEL, "epochs": args.epochs, "batch_size": args.batch},
         "resources": {"cpu": str(args.cpu), "workers": args.workers}}],
        "edges": [{"from": "features", "to": "train"}]}


def run_fabric(client: Any, args: argparse.Namespace) -> tuple[float, dict[str, Any]]:
    start = time.perf_counter()
    submission = client.submit(fabric_spec(args))
    status = submission.wait(1800)
    took = time.perf_counter() - start
    if status.state != "SUCCEEDED":
        raise SystemExit(f"fabric run ended {status.state}: {status.node('train').error}")
    return took, json.loads(submission.result("train", "metrics_json"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cpu", type=float, default=1.0, help="CPUs per training worker")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--num-cpus", type=int, default=2)
    args = parser.parse_args()
    from tests.ml_nodes import feature_table

    home = Path(tempfile.mkdtemp(prefix="fabric-bench-train-"))
    client = fb.connect("local", num_cpus=args.num_cpus, home=str(home / "fabric"))
    (home / "anchor").mkdir()
    print(f"BiLSTM hidden={MODEL['hidden']} seq_len={MODEL['seq_len']}, {args.epochs} epochs, batch {args.batch}, "
          f"{args.workers} worker(s) x {args.cpu:g} CPU, features of {FEATURES}")
    run_anchor(args, feature_table, home / "anchor", 0)  # warm-up: worker processes, imports, MLflow's schema
    run_fabric(client, args)
    anchor_times, fabric_times = [], []
    for index in range(1, args.repeats + 1):
        anchor_times.append(run_anchor(args, feature_table, home / "anchor", index))
        took, metrics = run_fabric(client, args)
        fabric_times.append(took)
        print(f"  repeat {index}: Ray Train direct {anchor_times[-1]:7.2f}s   fabric {took:7.2f}s   "
              f"(fabric epochs {[round(r['epoch_s'], 2) for r in metrics['history']]} s)")
    anchor_s, fabric_s = statistics.median(anchor_times), statistics.median(fabric_times)
    print(f"{'':18} {'Ray Train direct':>17} {'fabric':>9} {'ratio':>6}")
    print(f"{'train + MLflow':18} {anchor_s:16.2f}s {fabric_s:8.2f}s {fabric_s / anchor_s:6.3f}   (target <= 1.05)")
    ray.shutdown()


if __name__ == "__main__":
    main()
