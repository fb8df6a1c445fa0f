"""`finetune` on Ray Train: TRL in each TorchTrainer worker (a placement group of the node's workers; gloo on CPU,
NCCL on GPUs), checkpoints reported to the node's checkpoint storage, and every attempt resumed from the newest."""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fabric.ml.genai.finetune import latest_checkpoint, train
from fabric.ml.genai.params import FinetuneParams
from fabric.ml.loop import Heartbeat, read_heartbeat
from fabric.ml.ray_runs import ProgressWatch, worker_resources
from fabric.plan.call import NodeCall
from fabric.plan.model import ResourceUnit


@dataclass(frozen=True)
class Tuned:
    checkpoint: str  # the directory of the last step's checkpoint (under storage)
    resumed_from_step: int | None  # the step the last worker group started after, when it resumed
    final_step: int


def finetune_worker(config: dict[str, Any]) -> None:
    """The per-worker function of the TorchTrainer."""
    import ray
    import ray.train
    import torch

    context = ray.train.get_context()
    rank = context.get_world_rank()
    params = FinetuneParams.model_validate(config["params"])
    rows = ray.get(config["rows_ref"])
    filesystem = config.get("filesystem")

    def report(metrics: dict[str, float], checkpoint_dir: str | None) -> None:
        checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=checkpoint)

    # The newest checkpoint of this run or of an earlier attempt, read from storage (not get_checkpoint():
    # a checkpoint reported just before a worker died may be on storage and not known to the controller).
    newest = latest_checkpoint(config["storage"], filesystem)
    resumed = int(newest[1]["step"]) if newest else None
    beat = Heartbeat(config["heartbeat_dir"], rank, resumed_from=resumed, filesystem=filesystem)
    use_cpu = not (config["use_gpu"] and torch.cuda.is_available())
    with tempfile.TemporaryDirectory(prefix=f"fabric-finetune-{rank}-") as out:
        resume = None
        if newest is not None:
            resume = str(Path(out) / "resume" / f"checkpoint-{resumed}")
            ray.train.Checkpoint(newest[0], filesystem=filesystem).to_directory(resume)
        train(params, rows, config["base"], str(Path(out) / "run"), report=report, resume=resume, beat=beat,
              use_cpu=use_cpu)


def fit(call: NodeCall, params: FinetuneParams, rows: Mapping[str, list[Any]], base: str, unit: ResourceUnit,
        storage: str, heartbeat_dir: str, progress: Callable[[float, str], None], filesystem: Any = None) -> Tuned:
    """Fine-tune through Ray Train's TorchTrainer (`unit.workers` workers of `unit` each, in a placement group),
    resuming from the newest checkpoint of any earlier attempt; a run already trained to the end is not run again."""
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    previous = latest_checkpoint(storage, filesystem)
    if previous is not None and previous[1]["step"] >= previous[1]["max_steps"]:  # a later step had failed
        return Tuned(previous[0], None, int(previous[1]["step"]))
    workers = max(1, unit.workers)
    scaling = ScalingConfig(num_workers=workers, use_gpu=unit.num_gpus > 0, resources_per_worker=worker_resources(unit),
                            placement_strategy=unit.placement or "PACK")
    run = RunConfig(name=f"attempt-{call.attempt}", storage_path=storage, storage_filesystem=filesystem,
                    checkpoint_config=CheckpointConfig(num_to_keep=2),
                    failure_config=FailureConfig(max_failures=params.max_failures))
    config = {"params": params.model_dump(), "rows_ref": ray.put(dict(rows)), "base": base, "storage": storage,
              "heartbeat_dir": heartbeat_dir, "filesystem": filesystem, "use_gpu": unit.num_gpus > 0}
    trainer = TorchTrainer(finetune_worker, train_loop_config=config, scaling_config=scaling, run_config=run)
    watcher = ProgressWatch(heartbeat_dir, filesystem, params.epochs, progress)
    try:
        trainer.fit()
    finally:
        watcher.stop()
    latest = latest_checkpoint(storage, filesystem)
    if latest is None or latest[1]["step"] < latest[1]["max_steps"]:
        raise RuntimeError(f"fine-tuning ended without a checkpoint of its last step under {storage}")
    try:  # where the last worker group started, as rank 0 last said
        resumed = read_heartbeat(heartbeat_dir, 0, filesystem)["resumed_from"]
    except (OSError, ValueError, KeyError):  # rank 0 ran on another machine
        resumed = int(previous[1]["step"]) if previous else None
    return Tuned(latest[0], resumed, int(latest[1]["step"]))
