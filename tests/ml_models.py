"""Tiny MLflow pyfunc models for the serving tests (importable by Serve replicas as `tests.ml_models`)."""

from __future__ import annotations

import mlflow.pyfunc


class Scale(mlflow.pyfunc.PythonModel):
    def __init__(self, factor: float) -> None:
        self.factor = factor

    def predict(self, context, model_input, params=None):  # noqa: ANN001 - MLflow's signature
        return (model_input.sum(axis=1) * self.factor).tolist()


class Broken(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):  # noqa: ANN001
        raise RuntimeError("this model always fails")


def log_model(tracking_uri: str, model: mlflow.pyfunc.PythonModel, artifacts_dir: str) -> str:
    """Log `model` to a sqlite MLflow store and return its runs:/ URI (the process's MLflow settings and
    environment are left as they were: a later module's Ray would inherit them)."""
    from fabric.ml.tracking import _tracking

    with _tracking(tracking_uri):
        return _log(model, artifacts_dir)


def _log(model: mlflow.pyfunc.PythonModel, artifacts_dir: str) -> str:
    experiment = mlflow.get_experiment_by_name("fabric-tests") or None
    experiment_id = experiment.experiment_id if experiment else mlflow.create_experiment(
        "fabric-tests", artifact_location=artifacts_dir)
    with mlflow.start_run(experiment_id=experiment_id):
        info = mlflow.pyfunc.log_model(name="model", python_model=model)
    return info.model_uri


def model_uri(uri: str) -> str:
    return uri


def evidence(sharpe: float, max_drawdown: float, card: dict | None) -> dict:
    """Backtest metrics and a model card, as a promote node reads them."""
    return {"metrics": {"sharpe": sharpe, "max_drawdown": max_drawdown}, "model_card": card}


def write_files() -> str:
    import json

    from fabric.context import context

    root = context().artifact_dir
    (root / "metrics.json").write_text(json.dumps({"score": 1}))
    (root / "sub").mkdir(exist_ok=True)
    (root / "sub" / "notes.txt").write_text("hello")
    return "written"
