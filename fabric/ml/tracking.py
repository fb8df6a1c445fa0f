"""MLflow for ML nodes: where the tracking store is, one tagged run per attempt, the model registered."""

from __future__ import annotations

import fcntl
import json
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fabric.plan.call import NodeCall
from fabric.settings import ENV, settings

TRACKING_ENV = ENV["mlflow_uri"]
ARTIFACTS_ENV = ENV["mlflow_artifacts"]
MAX_PARAM_CHARS = 6000  # MLflow's limit on a param value


def default_home() -> str:
    return settings().home


def tracking_uri(home: str | None = None) -> str:
    """`$FABRIC_MLFLOW_URI`, else `$MLFLOW_TRACKING_URI`, else a SQLite file `<FABRIC_HOME>/mlflow.db`;
    read where the node runs (fabric/settings.py)."""
    return settings(home).mlflow_uri


def artifact_root(home: str | None = None) -> str:
    """Where new experiments keep artifacts: `$FABRIC_MLFLOW_ARTIFACTS`, else `<FABRIC_HOME>/mlartifacts`.
    With a tracking server that serves artifacts itself, set it to that server's `mlflow-artifacts:/` root."""
    return settings(home).mlflow_artifacts


def run_tags(call: NodeCall) -> dict[str, str]:
    tags = {"submission_id": call.submission_id, "pipeline_id": call.pipeline_id, "node_id": call.node_id,
            "fabric.kind": call.kind, "fabric.attempt": str(call.attempt)}
    if call.team:
        tags["team"] = call.team
    return tags


def experiment_id(client: Any, name: str, home: str) -> str:
    import mlflow

    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        location = artifact_root(home).rstrip("/") + "/" + name
        return client.create_experiment(name, artifact_location=location)
    except mlflow.exceptions.MlflowException:  # another node made it meanwhile
        return client.get_experiment_by_name(name).experiment_id


def ensure_store(uri: str) -> Any:
    """A client of the store; a new SQLite store is created under a file lock, because two nodes that
    start at once would otherwise both run MLflow's schema migrations on the same file."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=uri)
    if not uri.startswith("sqlite:///"):
        return client
    database = Path(uri.removeprefix("sqlite:///"))
    database.parent.mkdir(parents=True, exist_ok=True)
    with open(f"{database}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            client.search_experiments(max_results=1)  # creates and migrates the schema when it is new
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
    return client


@contextmanager
def node_run(call: NodeCall, experiment: str | None = None, *, nested_parent: str | None = None
             ) -> Iterator[Any]:
    """An active MLflow run for this attempt of this node, tagged with its ids (and team). It ends FAILED
    when the body raises, so a failed attempt shows as such beside the attempt that succeeded."""
    import mlflow

    uri = tracking_uri(call.home)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)  # the model registers where the run is tracked, whatever the worker inherited
    client = ensure_store(uri)
    exp = experiment_id(client, experiment or call.pipeline_id, call.home)
    with mlflow.start_run(experiment_id=exp, run_name=f"{call.node_id}-{call.submission_id}-a{call.attempt}",
                          tags=run_tags(call)) as run:
        yield run


def log_params(params: Mapping[str, Any], prefix: str = "") -> None:
    import mlflow

    flat = {f"{prefix}{key}": value if isinstance(value, str) else json.dumps(value, default=str)
            for key, value in params.items()}
    mlflow.log_params({key: value[:MAX_PARAM_CHARS] for key, value in flat.items()})


def log_history(history: list[Mapping[str, float]]) -> None:
    import mlflow

    for row in history:
        mlflow.log_metrics({k: float(v) for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))


def log_torch_model(model: Any, registered_name: str, example: Any, tags: Mapping[str, str]) -> str:
    """Log the model (the pytorch flavour, which pyfunc loads) and register a new version of it; the
    `models:/name/version` URI is the node's `model_uri`."""
    import mlflow
    import numpy as np
    import torch

    with torch.no_grad():
        sample = np.asarray(example, dtype=np.float32)
        prediction = model(torch.from_numpy(sample)).numpy()
    signature = mlflow.models.infer_signature(sample, prediction)
    # Requirements listed, not inferred: inference loads the model in a subprocess (seconds per node).
    info = mlflow.pytorch.log_model(model, name="model", signature=signature, registered_model_name=registered_name,
                                    serialization_format="pickle",
                                    pip_requirements=[f"torch=={torch.__version__.split('+')[0]}",
                                                      f"numpy=={np.__version__}"])
    version = info.registered_model_version
    client = mlflow.MlflowClient()
    for key, value in tags.items():
        client.set_model_version_tag(registered_name, str(version), key, value)
    return f"models:/{registered_name}/{version}"


def register_directory(local: Path, registered_name: str, tags: Mapping[str, str]) -> str:
    """Log a save_pretrained directory as the active run's `model` artifacts and register a new version whose
    source is them (the files, not an MLflow flavour: `llm_generate` loads them with transformers); the
    `models:/name/version` URI."""
    import mlflow

    mlflow.log_artifacts(str(local), "model")
    client = mlflow.MlflowClient()
    try:
        client.create_registered_model(registered_name)
    except mlflow.exceptions.MlflowException:  # it exists (an earlier run, or another node meanwhile)
        pass
    run = mlflow.active_run()
    version = client.create_model_version(registered_name, mlflow.get_artifact_uri("model"),
                                          run_id=run.info.run_id if run else None, tags=dict(tags))
    return f"models:/{registered_name}/{version.version}"


def download_registered(model_uri: str, target: str, *, home: str | None = None) -> str:
    """The files of a registered version (`models:/name/version`) copied to `target`, read from the fabric's
    tracking store; the local directory."""
    import mlflow

    with _tracking(tracking_uri(home)):
        return str(mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=target))


def registered_version(model_uri: str, *, home: str | None = None) -> str:
    """`models:/name/version` for a `models:/name/<version|latest>` or `models:/name@alias` URI (a fixed version
    names fixed files, so it keys a cache); MlflowException when the registry has no such model."""
    import mlflow

    rest = model_uri.removeprefix("models:/")
    with _tracking(tracking_uri(home)):
        client = mlflow.MlflowClient()
        if "@" in rest:
            name, alias = rest.split("@", 1)
            return f"models:/{name}/{client.get_model_version_by_alias(name, alias).version}"
        name, _, version = rest.rpartition("/")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,255}", name):
            raise mlflow.exceptions.MlflowException(f"{model_uri!r} does not name a registered model")
        if version.isdigit():
            client.get_model_version(name, version)  # raises when it is not there
            return f"models:/{name}/{version}"
        if version != "latest" or not name:
            raise mlflow.exceptions.MlflowException(f"{model_uri!r} is not models:/NAME/VERSION, "
                                                    "models:/NAME/latest or models:/NAME@ALIAS")
        versions = client.search_model_versions(f"name = '{name}'")
        if not versions:
            raise mlflow.exceptions.MlflowException(f"registered model {name!r} has no version")
        return f"models:/{name}/{max(int(v.version) for v in versions)}"


@contextmanager
def _tracking(uri: str) -> Iterator[None]:
    import mlflow
    from mlflow.tracking import _model_registry, _tracking_service

    # set_*_uri also export MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI to os.environ, which every Ray this
    # process starts later inherits: restore the raw settings and the environment exactly as they were.
    previous = (_tracking_service.utils._tracking_uri, _model_registry.utils._registry_uri,
                {name: os.environ.get(name) for name in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")})
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)  # `models:/` URIs resolve against the registry: the same store
    try:
        yield
    finally:
        _tracking_service.utils._tracking_uri, _model_registry.utils._registry_uri, environment = previous
        for name, value in environment.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def load_model(model_uri: str, *, home: str | None = None, uri: str | None = None) -> Any:
    """A trained model for prediction: `mlflow.pyfunc.load_model(model_uri)` against the fabric's tracking
    store (the default store of `home`, or `uri`). `model.predict(windows)` takes float32 arrays shaped
    [n, seq_len, n_features] (a `bilstm` model) and returns one prediction per window."""
    import mlflow

    with _tracking(uri or tracking_uri(home)):
        return mlflow.pyfunc.load_model(model_uri)


def artifact_hash(model_uri: str, *, home: str | None = None, uri: str | None = None) -> str:
    """The digest of a model's stored files (every file under its artifact path): a trainer records it
    next to the model, and `promote` recomputes it from the store to prove the artifact is the same."""
    import tempfile

    import mlflow

    from fabric.digests import value_digest

    with _tracking(uri or tracking_uri(home)), tempfile.TemporaryDirectory(prefix="fabric-model-") as tmp:
        local = mlflow.artifacts.download_artifacts(artifact_uri=model_uri, dst_path=tmp)
        return value_digest(local).removeprefix("path:")
