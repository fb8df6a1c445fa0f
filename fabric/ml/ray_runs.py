"""Ray Train and Ray Tune, driven from inside a node's task: scaling from the node's resources, checkpoints
under the artifact store keyed by submission and node, resume from the newest one."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from fabric.ml.base import Prepared
from fabric.ml.loop import latest_checkpoint, read_heartbeat, run_epochs
from fabric.plan.call import NodeCall
from fabric.plan.model import ResourceUnit


def checkpoint_storage(call: NodeCall, node_dir: Path) -> str:
    """`<artifact store>/checkpoints/<submission>/<node>`: every attempt of the node (retried, preempted,
    resumed by a new registry) looks in the same place. The store is what every Ray node can reach."""
    root = call.artifacts or str(node_dir.parent.parent.parent / "artifacts")
    if "://" not in root:
        root = str(Path(root).resolve())
    base, mark, query = root.partition("?")  # s3://bucket/x?endpoint_override=...: the path goes before the query
    return f"{base.rstrip('/')}/checkpoints/{call.submission_id}/{call.node_id}{mark}{query}"


def worker_unit(call: NodeCall) -> ResourceUnit:
    """What one worker (or trial) of the node gets: its resources, or, for GPU-first work that the
    scheduler sent to CPUs (`resources.fallback`), the fallback CPUs and no GPU."""
    unit = call.unit or ResourceUnit()
    if call.device == "cpu" and unit.fallback_cpus is not None:
        unit = replace(unit, num_cpus=unit.fallback_cpus, num_gpus=0.0, fallback_cpus=None,
                       custom={k: v for k, v in unit.custom.items() if k != "gpu_mem_gb"})
    return unit


def worker_resources(unit: ResourceUnit) -> dict[str, float]:
    resources: dict[str, float] = {"CPU": unit.num_cpus}
    if unit.num_gpus:
        resources["GPU"] = unit.num_gpus
    if unit.memory:
        resources["memory"] = float(unit.memory)
    resources.update(unit.custom)
    return resources


@dataclass(frozen=True)
class Fitted:
    checkpoint: str  # the directory of the last epoch's checkpoint
    resumed_from_epoch: int | None  # the first epoch the last worker group trained, when it resumed


def train_worker(config: dict[str, Any]) -> None:
    """The per-worker function of the TorchTrainer."""
    import ray
    import ray.train
    import ray.train.torch

    context = ray.train.get_context()
    data = ray.get(config["data_ref"])

    def report(metrics: dict[str, float], checkpoint_dir: str | None) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)

    params = {k: v for k, v in config.items() if k not in ("data_ref", "heartbeat_dir", "storage", "filesystem")}
    kwargs = {"rank": context.get_world_rank(), "world": context.get_world_size(), "report": report,
              "heartbeat_dir": config["heartbeat_dir"], "device": ray.train.torch.get_device(),
              "filesystem": config.get("filesystem"),
              "prepare_model": ray.train.torch.prepare_model if context.get_world_size() > 1 else None}
    # The newest checkpoint in storage, of this run or an earlier attempt. Not `ray.train.get_checkpoint()`
    # after an in-run restart (max_failures): a checkpoint reported just before a worker died is on
    # storage but may not have reached Ray Train's controller, which then restarts an epoch too early.
    filesystem = config.get("filesystem")
    newest = latest_checkpoint(config["storage"], filesystem)
    checkpoint = ray.train.Checkpoint(newest[0], filesystem=filesystem) if newest else None
    if checkpoint is None:
        run_epochs(params, data, resume=None, **kwargs)
        return
    with checkpoint.as_directory() as directory:
        run_epochs(params, data, resume=Path(directory), **kwargs)


def fit(call: NodeCall, params: Mapping[str, Any], data: Prepared, unit: ResourceUnit, storage: str,
        heartbeat_dir: str, progress: Callable[[float, str], None], filesystem: Any = None) -> Fitted:
    """Train through Ray Train's TorchTrainer, resuming from the newest checkpoint of any earlier attempt.
    `filesystem` (a pyarrow one) reaches `storage` where this node shares no disk with it (the head's)."""
    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    epochs = int(params["epochs"])
    previous = latest_checkpoint(storage, filesystem)
    if previous is not None and previous[1] >= epochs - 1:  # trained to the end; a later step had failed
        return Fitted(previous[0], None)
    scaling = ScalingConfig(num_workers=unit.workers, use_gpu=unit.num_gpus > 0,
                            resources_per_worker=worker_resources(unit),
                            placement_strategy=unit.placement or "PACK")
    run = RunConfig(name=f"attempt-{call.attempt}", storage_path=storage, storage_filesystem=filesystem,
                    failure_config=FailureConfig(max_failures=int(params["max_failures"])))
    config = {**params, "data_ref": ray.put(data), "heartbeat_dir": heartbeat_dir, "storage": storage,
              "filesystem": filesystem}
    trainer = TorchTrainer(train_worker, train_loop_config=config, scaling_config=scaling, run_config=run)
    watcher = ProgressWatch(heartbeat_dir, filesystem, epochs, progress)
    try:
        trainer.fit()
    finally:
        watcher.stop()
    latest = latest_checkpoint(storage, filesystem)
    if latest is None or latest[1] < epochs - 1:
        raise RuntimeError(f"training ended without a checkpoint of the last epoch under {storage}")
    try:  # where the last worker group started (an in-run restart too), as rank 0 last said
        resumed = read_heartbeat(heartbeat_dir, 0, filesystem)["resumed_from"]
    except (OSError, ValueError, KeyError):  # rank 0 ran on another machine
        resumed = previous[1] + 1 if previous else None
    return Fitted(latest[0], resumed)


class ProgressWatch:
    """Turns rank 0's heartbeat into the node's progress (the workers are other processes than the node's)."""

    def __init__(self, directory: str, filesystem: Any, epochs: int, progress: Callable[[float, str], None]) -> None:
        self.directory, self.filesystem, self.epochs, self.progress = directory, filesystem, epochs, progress
        self.stopped = threading.Event()
        threading.Thread(target=self._watch, name="fabric-train-progress", daemon=True).start()

    def _watch(self) -> None:
        while not self.stopped.wait(1.0):
            try:
                beat = read_heartbeat(self.directory, 0, self.filesystem)
            except (OSError, ValueError):
                continue
            self.progress(min(beat["epoch"] / self.epochs, 0.99), f"epoch {beat['epoch'] + 1}/{self.epochs}")

    def stop(self) -> None:
        self.stopped.set()


def _tune_trial(config: dict[str, Any], data: Prepared) -> None:
    from ray import tune

    run_epochs(config, data, rank=0, world=1, resume=None, heartbeat_dir=None,
               report=lambda metrics, _checkpoint: tune.report(metrics))


def sweep(call: NodeCall, params: Mapping[str, Any], space: Mapping[str, Any], data: Prepared, unit: ResourceUnit,
          storage: str, *, metric: str, mode: str, num_samples: int, filesystem: Any = None) -> Any:
    """A Tune sweep: one trial per sample of `space` (params fixed elsewhere), `unit` per trial, at most
    `unit.workers` trials at once. Returns Tune's ResultGrid."""
    from ray import tune
    from ray.tune.search import BasicVariantGenerator

    trainable = tune.with_resources(tune.with_parameters(_tune_trial, data=data),
                                    {k.lower() if k in ("CPU", "GPU") else k: v
                                     for k, v in worker_resources(unit).items()})
    search = BasicVariantGenerator(random_state=int(params["seed"]), max_concurrent=unit.workers)
    tuner = tune.Tuner(trainable, param_space={**params, **space},
                       tune_config=tune.TuneConfig(metric=metric, mode=mode, num_samples=num_samples,
                                                   search_alg=search),
                       run_config=tune.RunConfig(name=f"attempt-{call.attempt}", storage_path=storage,
                                                 storage_filesystem=filesystem, verbose=0))
    return tuner.fit()
