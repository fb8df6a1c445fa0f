"""Kind `finetune`: SFT or DPO with TRL (optionally a LoRA adapter) on Ray Train workers, a checkpoint each epoch or
N steps, resumed by every later attempt; the model (or adapter) saved with save_pretrained under the artifact store
and, with MLflow installed, logged and registered; outs `model_uri` (what `llm_generate` takes as `model`) and
`metrics_json`."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fabric.errors import Problem
from fabric.kinds.base import NodeCall, params_problem
from fabric.kinds.llm import extra_and_param_problems, input_table
from fabric.kinds.train import outputs
from fabric.spec import NodeSpec

FINETUNE_OUTS = ("model_uri", "metrics_json")
FINETUNE_PACKAGES = ("torch", "transformers", "trl", "peft", "datasets")


def model_storage(call: NodeCall, checkpoints: str) -> str:
    """`<artifact store>/models/<submission>/<node>`, beside the node's checkpoints (what every Ray node reaches)."""
    base, mark, query = checkpoints.partition("?")
    root = base.rstrip("/").rsplit("/checkpoints/", 1)[0]
    return f"{root}/models/{call.submission_id}/{call.node_id}{mark}{query}"


class FinetuneKind:
    """One input: a table with the method's columns (sft: prompt, completion; dpo: prompt, chosen, rejected).
    `resources` are per training worker, `resources.workers` their number. Params: docs/genai.md#finetune."""

    name = "finetune"

    def check(self, node: NodeSpec, where: str) -> list[Problem]:
        from fabric.ml.genai.params import FinetuneParams

        problems = extra_and_param_problems(node, where, FinetuneParams, FINETUNE_PACKAGES, "docs/genai.md#finetune")
        if len(node.ins) != 1:
            problems.append(params_problem(f"{where}.ins", f"finetune takes 1 input (the training table), not "
                                           f"{len(node.ins)}", "wire one table in: ins: [pairs]"))
        undeclared = [out for out in node.outs if out not in FINETUNE_OUTS]
        if undeclared:
            problems.append(params_problem(f"{where}.outs", f"finetune makes {list(FINETUNE_OUTS)}, not {undeclared}",
                                           f"declare outs among {list(FINETUNE_OUTS)}"))
        return problems

    def run(self, call: NodeCall, inputs: Mapping[str, Any]) -> Any:
        import tempfile

        from fabric.context import context
        from fabric.ml.genai import finetune, finetune_ray, models
        from fabric.ml.genai.params import FinetuneParams
        from fabric.ml.ray_runs import checkpoint_storage, worker_resources, worker_unit

        ctx = context()
        params = FinetuneParams.model_validate(dict(call.params))
        base = models.resolve(params.model, home=call.home)  # a missing model fails here, before any worker starts
        if not (base / "config.json").is_file():
            raise ValueError(f"model {params.model!r} is an adapter; finetune starts from a full model")
        table = input_table(next(iter(inputs.values())), call.input_names[0], params.columns)
        rows = {column: table.column(column).to_pylist() for column in params.columns}
        finetune.check_rows(rows, params.columns)
        unit = worker_unit(call)
        storage = checkpoint_storage(call, ctx.artifact_dir)
        filesystem = ctx.checkpoint_fs(storage) if ctx.checkpoint_fs else None
        ctx.on_preempt(lambda: ctx.logger.info("preempted: the next attempt resumes from the newest checkpoint "
                                               "under %s", storage))
        ctx.logger.info("finetune %s%s: %d rows, %d worker(s) of %s", params.method, " with LoRA" if params.lora
                        else "", table.num_rows, max(1, unit.workers), worker_resources(unit))
        beats = storage if filesystem is not None else str(ctx.artifact_dir)
        tuned = finetune_ray.fit(call, params, rows, str(base), unit, storage, beats, ctx.progress, filesystem)
        if tuned.resumed_from_step is not None:
            ctx.logger.info("resumed from the checkpoint of step %d", tuned.resumed_from_step)
        reference = params.model if "://" in params.model else str(base.resolve())
        saved = model_storage(call, storage)
        with tempfile.TemporaryDirectory(prefix="fabric-finetuned-") as tmp:
            local = Path(tmp) / "model"
            state = finetune.export_model(tuned.checkpoint, local, reference, filesystem)
            finetune.copy_tree(str(local), saved)
            history = finetune.loss_history(state)
            metrics: dict[str, Any] = {
                "method": params.method, "lora": params.lora.model_dump() if params.lora else None,
                "steps": tuned.final_step, "epochs": params.epochs, "history": history,
                "first_loss": history[0]["loss"] if history else None,
                "final_loss": history[-1]["loss"] if history else None,
                "resumed_from_step": tuned.resumed_from_step, "rows": table.num_rows, "workers": max(1, unit.workers),
                "model_path": saved, "attempt": call.attempt}
            metrics["model_uri"] = self._track(call, params, local, metrics, ctx) or saved
        metrics_json = json.dumps(metrics, default=float)
        (ctx.artifact_dir / "metrics.json").write_text(metrics_json)
        ctx.progress(1.0, f"fine-tuned {tuned.final_step} steps; {metrics['model_uri']}")
        return outputs(call, {"model_uri": metrics["model_uri"], "metrics_json": metrics_json})

    @staticmethod
    def _track(call: NodeCall, params: Any, local: Path, metrics: dict[str, Any], ctx: Any) -> str | None:
        """Log the run to MLflow and register the model directory; None (and a log line) without MLflow."""
        if importlib.util.find_spec("mlflow") is None:
            ctx.logger.info("MLflow is not installed: the model is not registered; model_uri is its path")
            return None
        import mlflow

        from fabric.ml import tracking

        with tracking.node_run(call, params.experiment) as run:
            tracking.log_params(params.model_dump(exclude={"experiment", "registered_model"}))
            for row in metrics["history"]:
                mlflow.log_metrics({"train_loss": row["loss"], "epoch": row["epoch"]}, step=row["step"])
            name = params.registered_model or f"{call.pipeline_id}.{call.node_id}"
            model_uri = tracking.register_directory(local, name, tracking.run_tags(call))
            metrics["mlflow_run_id"] = run.info.run_id
            mlflow.log_dict({**metrics, "model_uri": model_uri}, "metrics.json")
        return model_uri
