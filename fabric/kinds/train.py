"""Kinds `train` and `ray_job`: a registered trainer (e.g. `bilstm`) fitted through Ray Train's TorchTrainer,
a checkpoint per epoch, logged and registered in MLflow; outs `model_uri` and `metrics_json`."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Mapping
from typing import Any

from fabric.errors import Problem
from fabric.kinds.base import NodeCall, params_problem
from fabric.spec import NodeSpec

TRAIN_KEYS = frozenset({"trainer", "experiment", "registered_model", "max_failures"})
TRAIN_OUTS = ("model_uri", "metrics_json")
ML_PACKAGES = ("torch", "mlflow")


def ml_params_problems(node: NodeSpec, where: str, kind_keys: frozenset[str], outs: tuple[str, ...],
                       overrides: Mapping[str, Any] | None = None) -> list[Problem]:
    """Submit-time checks every ML kind shares: the trainer exists, its params and the loop's are known and
    sane, the declared outs are ones the kind makes, the packages are installed. `overrides` are values a
    search space will set (they satisfy the trainer's checks with their first candidate)."""
    from fabric.ml.loop import LOOP_DEFAULTS
    from fabric.ml.trainers import available_trainers
    from fabric.spec._text import did_you_mean

    problems = []
    missing = [name for name in ML_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        problems.append(params_problem(f"{where}.kind", f"kind {node.kind!r} needs {missing} installed here",
                                       "install the train extra: pip install -e '.[train]' (fabric-ray)"))
    name = node.params.get("trainer", "bilstm")
    trainers = available_trainers()
    trainer = trainers.get(name) if isinstance(name, str) else None
    if trainer is None:
        problems.append(params_problem(f"{where}.params.trainer", f"no trainer named {name!r}",
                                       f"use one of: {', '.join(sorted(trainers))}"))
        return problems
    known = set(kind_keys) | set(LOOP_DEFAULTS) | set(trainer.defaults)
    for key in sorted(set(node.params) - known):
        hint = did_you_mean(key, known)
        problems.append(params_problem(f"{where}.params.{key}", f"{node.kind} with trainer {name!r} takes no "
                                       f"param {key!r}" + (f" ({hint.strip()})" if hint else ""),
                                       f"{hint}params: {', '.join(sorted(known))}"))
    merged = {**LOOP_DEFAULTS, **trainer.defaults, **node.params, **(overrides or {})}
    for key in ("epochs", "batch_size"):
        if not isinstance(merged[key], int) or isinstance(merged[key], bool) or merged[key] < 1:
            problems.append(params_problem(f"{where}.params.{key}", f"{key} must be a positive integer",
                                           f"set {key} to e.g. {LOOP_DEFAULTS[key]}"))
    if not isinstance(merged["lr"], int | float) or isinstance(merged["lr"], bool) or not merged["lr"] > 0:
        problems.append(params_problem(f"{where}.params.lr", "lr must be a positive number", "set lr to e.g. 0.001"))
    for message in trainer.check(merged):
        problems.append(params_problem(f"{where}.params", f"trainer {name!r}: {message}", "fix the param"))
    undeclared = [out for out in node.outs if out not in outs]
    if undeclared:
        problems.append(params_problem(f"{where}.outs", f"{node.kind} makes {list(outs)}, not {undeclared}",
                                       f"declare outs among {list(outs)}"))
    if not node.ins:
        problems.append(params_problem(f"{where}.ins", f"{node.kind} node {node.id!r} has no input to train on",
                                       "wire the feature table in: ins: [feature_table]"))
    return problems


def merged_params(call: NodeCall, kind_defaults: Mapping[str, Any]) -> dict[str, Any]:
    from fabric.ml.loop import LOOP_DEFAULTS
    from fabric.ml.trainers import get_trainer

    trainer = get_trainer(call.params.get("trainer", "bilstm"))
    return {**LOOP_DEFAULTS, **trainer.defaults, **kind_defaults, "trainer": trainer.name, **call.params}


def outputs(call: NodeCall, values: Mapping[str, Any]) -> Any:
    """The declared outs (all of them as one dict when the node declares none)."""
    return {out: values[out] for out in call.declared_outs} if call.declared_outs else dict(values)


class TrainKind:
    """`resources` are per training worker, `resources.workers` their number (default 1) and
    `resources.placement` their placement strategy (PACK); the node's own task only drives them (the
    backend gives kinds that place their own workers a task that holds nothing). Params: `trainer`
    (default bilstm), the loop's (epochs, lr, batch_size, weight_decay, seed), the trainer's, and
    `experiment`, `registered_model`, `max_failures` (Ray Train's in-run restarts)."""

    def __init__(self, name: str = "train") -> None:
        self.name = name

    def check(self, node: NodeSpec, where: str) -> list[Problem]:
        problems = ml_params_problems(node, where, TRAIN_KEYS, TRAIN_OUTS)
        failures = node.params.get("max_failures", 0)
        if not isinstance(failures, int) or isinstance(failures, bool) or failures < -1:
            problems.append(params_problem(f"{where}.params.max_failures", "max_failures must be an integer >= -1",
                                           "use 0 (default: the fabric's retry policy decides) or a count"))
        return problems

    def run(self, call: NodeCall, inputs: Mapping[str, Any]) -> Any:
        import mlflow

        from fabric.context import context
        from fabric.ml import ray_runs, tracking
        from fabric.ml.loop import load_trained
        from fabric.ml.trainers import get_trainer

        ctx = context()
        params = merged_params(call, {"max_failures": 0})
        trainer = get_trainer(params["trainer"])
        unit = ray_runs.worker_unit(call)
        storage = ray_runs.checkpoint_storage(call, ctx.artifact_dir)
        filesystem = ctx.checkpoint_fs(storage) if ctx.checkpoint_fs else None
        ctx.on_preempt(lambda: ctx.logger.info("preempted: the next attempt resumes from the newest checkpoint "
                                               "under %s", storage))
        data = trainer.prepare(inputs, params)
        ctx.logger.info("%s: %d training and %d validation samples, %d worker(s) of %s", trainer.name,
                        len(data.x_train), len(data.x_val), unit.workers, ray_runs.worker_resources(unit))
        with tracking.node_run(call, params.get("experiment")) as run:
            # Off the head, the heartbeat goes beside the checkpoints on the head: this disk keeps nothing.
            beats = storage if filesystem is not None else str(ctx.artifact_dir)
            fitted = ray_runs.fit(call, params, data, unit, storage, beats, ctx.progress, filesystem)
            if fitted.resumed_from_epoch is not None:
                ctx.logger.info("resumed from the checkpoint of epoch %d", fitted.resumed_from_epoch - 1)
            model, state = load_trained(fitted.checkpoint, filesystem)
            history = state["history"]
            tracking.log_params({k: v for k, v in params.items() if k != "features" or v is not None})
            tracking.log_history(history)
            registered = params.get("registered_model") or f"{call.pipeline_id}.{call.node_id}"
            model_uri = tracking.log_torch_model(model, registered, data.x_val[:2], tracking.run_tags(call))
            metrics = {"trainer": trainer.name, "epochs": int(params["epochs"]), "final": history[-1],
                       "history": history, "resumed_from_epoch": fitted.resumed_from_epoch,
                       "n_train": len(data.x_train), "n_val": len(data.x_val), "workers": unit.workers,
                       "features": data.meta.get("features"), "model_uri": model_uri,
                       "mlflow_run_id": run.info.run_id, "attempt": call.attempt}
            metrics_json = json.dumps(metrics, default=float)
            mlflow.log_dict(metrics, "metrics.json")
        (ctx.artifact_dir / "metrics.json").write_text(metrics_json)
        ctx.progress(1.0, f"trained {params['epochs']} epochs; {model_uri}")
        return outputs(call, {"model_uri": model_uri, "metrics_json": metrics_json})

