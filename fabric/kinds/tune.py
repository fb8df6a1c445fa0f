"""Kind `tune`: a Ray Tune sweep of a registered trainer over a search space written in the spec; outs the
best config and its metrics, every trial logged to MLflow as a child run of the sweep's run."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from fabric.errors import Problem
from fabric.kinds.base import NodeCall, params_problem
from fabric.kinds.train import merged_params, ml_params_problems, outputs
from fabric.spec import NodeSpec

TUNE_KEYS = frozenset({"trainer", "experiment", "search_space", "num_samples", "metric", "mode"})
TUNE_OUTS = ("best_config", "best_metrics")
METRICS = ("val_loss", "val_ic", "train_loss")


class TuneKind:
    """`resources` are per trial and `resources.workers` how many trials run at once (default 1).

    Params: `search_space` ({param: {choice|grid|uniform|loguniform|randint: ...}}), `num_samples`
    (default 1 for a grid, else 4), `metric` (val_loss) and `mode` (min), `experiment`, and any fixed
    trainer or loop param. `best_config` holds only the searched params; `best_metrics` the best trial's
    last epoch.
    """

    name = "tune"

    def check(self, node: NodeSpec, where: str) -> list[Problem]:
        from fabric.ml.space import space_problems

        space: Any = node.params.get("search_space")  # raw input: space_problems says what is wrong with it
        problems = [params_problem(f"{where}.params.search_space" + (f".{name}" if name else ""), message,
                                   "write e.g. search_space: {lr: {loguniform: [0.0001, 0.01]}, "
                                   "hidden: {choice: [8, 16]}}")
                    for name, message in space_problems(space)]
        first = {name: _first(domain) for name, domain in space.items()} if not problems else {}
        problems += ml_params_problems(node, where, TUNE_KEYS, TUNE_OUTS, overrides=first)
        if not problems:
            tunable = _tunable(node)
            unknown = sorted(set(space) - tunable)
            if unknown:
                problems.append(params_problem(f"{where}.params.search_space", f"cannot search {unknown}: "
                                               "not params of the trainer or the loop",
                                               f"search among {sorted(tunable)}"))
        metric, mode = node.params.get("metric", "val_loss"), node.params.get("mode", "min")
        if metric not in METRICS:
            problems.append(params_problem(f"{where}.params.metric", f"metric {metric!r} is not reported",
                                           f"use one of {list(METRICS)}"))
        if mode not in ("min", "max"):
            problems.append(params_problem(f"{where}.params.mode", f"mode {mode!r} is not min or max",
                                           "use min (losses) or max (val_ic)"))
        samples = node.params.get("num_samples", 1)
        if not isinstance(samples, int) or isinstance(samples, bool) or not 1 <= samples <= 10_000:
            problems.append(params_problem(f"{where}.params.num_samples", "num_samples must be an integer in "
                                           "[1, 10000]", "set num_samples to e.g. 4"))
        return problems

    def run(self, call: NodeCall, inputs: Mapping[str, Any]) -> Any:
        import mlflow

        from fabric.context import context
        from fabric.ml import ray_runs, tracking
        from fabric.ml.space import is_grid, to_tune
        from fabric.ml.trainers import get_trainer

        ctx = context()
        space = dict(call.params["search_space"])
        params = merged_params(call, {"metric": "val_loss", "mode": "min",
                                      "num_samples": 1 if is_grid(space) else 4})
        fixed = {k: v for k, v in params.items() if k not in ("search_space", *space)}
        metric, mode = params["metric"], params["mode"]
        trainer = get_trainer(params["trainer"])
        unit = ray_runs.worker_unit(call)
        data = trainer.prepare(inputs, params)
        storage = ray_runs.checkpoint_storage(call, ctx.artifact_dir)
        filesystem = ctx.checkpoint_fs(storage) if ctx.checkpoint_fs else None
        with tracking.node_run(call, params.get("experiment")) as parent:
            tracking.log_params({k: v for k, v in fixed.items() if k != "features" or v is not None})
            tracking.log_params({"search_space": space})
            grid = ray_runs.sweep(call, fixed, to_tune(space), data, unit, storage, metric=metric, mode=mode,
                                  num_samples=int(params["num_samples"]), filesystem=filesystem)
            errors = [str(r.error) for r in grid if r.error is not None]
            ok = [r for r in grid if r.error is None and r.metrics and metric in r.metrics]
            if not ok:
                raise RuntimeError(f"every trial of the sweep failed: {errors[:3]}")
            trials = []
            for index, result in enumerate(ok):
                searched = {name: result.config[name] for name in space}
                last = {k: float(result.metrics[k]) for k in METRICS if k in result.metrics}
                trials.append({"config": searched, "metrics": last})
                with mlflow.start_run(run_name=f"{call.node_id}-trial-{index}", nested=True,
                                      experiment_id=parent.info.experiment_id, tags=tracking.run_tags(call)):
                    tracking.log_params(searched)
                    history = result.metrics_dataframe
                    if history is not None and "epoch" in history:
                        tracking.log_history(history[["epoch", *[m for m in METRICS if m in history]]]
                                             .to_dict("records"))
            pick = min if mode == "min" else max
            best = pick(trials, key=lambda t: t["metrics"][metric])
            tracking.log_params(best["config"], prefix="best.")
            mlflow.log_metrics({f"best_{k}": v for k, v in best["metrics"].items()})
            summary = {"metric": metric, "mode": mode, "trials": trials, "failed_trials": len(errors),
                       "best": best, "mlflow_run_id": parent.info.run_id}
            mlflow.log_dict(summary, "sweep.json")
        (ctx.artifact_dir / "sweep.json").write_text(json.dumps(summary, default=float))
        ctx.progress(1.0, f"{len(trials)} trials; best {metric}={best['metrics'][metric]:.4g}")
        return outputs(call, {"best_config": best["config"],
                              "best_metrics": {**best["metrics"], "mlflow_run_id": parent.info.run_id}})


def _first(domain: Mapping[str, Any]) -> Any:
    (how, values), = domain.items()
    return values[0] if isinstance(values, list) and values else None


def _tunable(node: NodeSpec) -> set[str]:
    from fabric.ml.loop import LOOP_DEFAULTS
    from fabric.ml.trainers import available_trainers

    trainer = available_trainers().get(node.params.get("trainer", "bilstm"))
    return set(LOOP_DEFAULTS) | set(trainer.defaults if trainer else ())
