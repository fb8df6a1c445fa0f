"""Models on Ray Serve: one Serve application per served name, `fabric-model-<name>`, made of a `stable` and
(during a rollout) a `canary` MLflow pyfunc deployment behind a small `router` that splits traffic by weight
and measures each arm's errors and latency from the requests it routes.

The gateway's `POST /api/predict/{name}` calls the router through Serve's handle API; the `serve` kind
deploys, the `promote` kind shifts the canary's weight step by step. Applications have no HTTP route of
their own (`route_prefix=None`): the gateway, with its auth, is the only way in.
"""

from __future__ import annotations

import random
import time
from collections import deque
from typing import Any

from ray import serve

APP_PREFIX = "fabric-model-"
WINDOW = 2000  # latencies kept per arm


def app_name(name: str) -> str:
    return f"{APP_PREFIX}{name}"


def to_frame(instances: Any) -> Any:
    """Request instances (a list of records or of rows, or a columns dict) as the DataFrame pyfunc takes."""
    import pandas as pd

    if isinstance(instances, dict):
        return pd.DataFrame(instances)
    if isinstance(instances, list) and instances and isinstance(instances[0], dict):
        return pd.DataFrame.from_records(instances)
    return pd.DataFrame(instances)


def model_input(model: Any, instances: Any) -> Any:
    """A tensor-signature model (e.g. a torch BiLSTM taking [n, seq_len, features] windows) gets an array of its
    dtype; any other model gets a DataFrame."""
    import numpy as np

    schema = model.metadata.get_input_schema() if getattr(model, "metadata", None) else None
    if schema is not None and schema.is_tensor_spec():
        return np.asarray(instances, dtype=schema.inputs[0].type)
    return to_frame(instances)


def to_json(predictions: Any) -> Any:
    if hasattr(predictions, "to_dict") and hasattr(predictions, "columns"):
        return predictions.to_dict(orient="records")
    if hasattr(predictions, "tolist"):
        return predictions.tolist()
    return predictions


@serve.deployment(ray_actor_options={"num_cpus": 0.1})
class ModelServer:
    """One MLflow pyfunc model, loaded once per replica."""

    def __init__(self, model_uri: str, tracking_uri: str | None = None) -> None:
        self.model_uri = model_uri
        from fabric.ml.tracking import load_model

        self.model = load_model(model_uri, uri=tracking_uri)

    def predict(self, instances: Any) -> Any:
        return to_json(self.model.predict(model_input(self.model, instances)))


class _Arm:
    def __init__(self) -> None:
        self.requests = 0
        self.errors = 0
        self.latencies: deque[float] = deque(maxlen=WINDOW)

    def view(self) -> dict[str, Any]:
        ordered = sorted(self.latencies)

        def pct(q: float) -> float | None:
            return round(ordered[min(int(q * len(ordered)), len(ordered) - 1)], 3) if ordered else None

        return {"requests": self.requests, "errors": self.errors,
                "error_rate": self.errors / self.requests if self.requests else 0.0,
                "p50_ms": pct(0.5), "p99_ms": pct(0.99)}


@serve.deployment(num_replicas=1, ray_actor_options={"num_cpus": 0}, max_ongoing_requests=256)
class Router:
    """Sends each request to the canary with probability `weight`, else to stable; one replica, so the
    weight it is told and the statistics it keeps are the application's."""

    def __init__(self, stable: Any, canary: Any | None, weight: float, stable_uri: str,
                 canary_uri: str | None) -> None:
        self.arms = {"stable": stable, "canary": canary}
        self.uris = {"stable": stable_uri, "canary": canary_uri}
        self.weight = weight if canary is not None else 0.0
        self.stats = {"stable": _Arm(), "canary": _Arm()}

    async def predict(self, instances: Any, arm: str | None = None) -> dict[str, Any]:
        """`arm` forces one side (the promote kind's shadow probes); otherwise the weight decides."""
        if arm is None:
            arm = "canary" if self.arms["canary"] is not None and random.random() < self.weight else "stable"
        if self.arms.get(arm) is None:
            raise ValueError(f"no {arm} deployment in this application")
        stats = self.stats[arm]
        started = time.perf_counter()
        stats.requests += 1
        try:
            predictions = await self.arms[arm].predict.remote(instances)
        except Exception:
            stats.errors += 1
            raise
        finally:
            stats.latencies.append((time.perf_counter() - started) * 1000)
        return {"predictions": predictions, "model_uri": self.uris[arm], "arm": arm}

    def set_weight(self, weight: float) -> float:
        self.weight = min(max(float(weight), 0.0), 1.0) if self.arms["canary"] is not None else 0.0
        return self.weight

    def describe(self, reset: bool = False) -> dict[str, Any]:
        view = {"weight": self.weight, "uris": dict(self.uris),
                "stats": {arm: s.view() for arm, s in self.stats.items()}}
        if reset:
            self.stats = {"stable": _Arm(), "canary": _Arm()}
        return view


def deploy(name: str, stable_uri: str, *, canary_uri: str | None = None, weight: float = 0.0,
           tracking_uri: str | None = None, autoscaling: dict[str, Any] | None = None,
           num_replicas: int | None = None, replica_cpus: float = 0.1) -> Any:
    """(Re)deploy the application of `name`; Serve updates in place what changed. Returns the router handle."""
    _ensure_serve()
    scale: dict[str, Any] = {"autoscaling_config": dict(autoscaling)} if autoscaling else {
        "num_replicas": num_replicas or 1}
    server = ModelServer.options(  # type: ignore[attr-defined]  # a Deployment: mypy skips class decorators
        ray_actor_options={"num_cpus": replica_cpus}, **scale)
    stable = server.options(name="stable").bind(stable_uri, tracking_uri)
    canary = server.options(name="canary").bind(canary_uri, tracking_uri) if canary_uri else None
    app = Router.options(  # type: ignore[attr-defined]  # a Deployment too
        name="router").bind(stable, canary, weight, stable_uri, canary_uri)
    return serve.run(app, name=app_name(name), route_prefix=None)


def router(name: str) -> Any | None:
    """The router handle of `name`'s application, or None when there is none running."""
    try:
        status = serve.status().applications.get(app_name(name))
    except Exception:  # noqa: BLE001 - no Serve at all: nothing is served
        return None
    if status is None or str(status.status) not in ("RUNNING", "ApplicationStatus.RUNNING"):
        return None
    return serve.get_app_handle(app_name(name))


def _ensure_serve() -> None:
    """Serve is normally up already (the gateway started it). Without a gateway, start it with no HTTP
    proxy: models are reached through the gateway only, and no port is taken."""
    import ray

    try:
        ray.get_actor("SERVE_CONTROLLER_ACTOR", namespace="serve")
    except ValueError:
        serve.start(proxy_location="Disabled")


