"""The trainer contract: `Prepared` data and the `Trainer` protocol (the registry and the trainers both import it)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable


@dataclass(frozen=True)
class Prepared:
    """A trainer's data, ready for the loop: float32 arrays, split by time, plus what the model needs
    to be built again (shapes, normalisation), which travels with every checkpoint."""

    x_train: Any  # numpy arrays; the first axis is the sample
    y_train: Any
    x_val: Any
    y_val: Any
    meta: Mapping[str, Any]


@runtime_checkable
class Trainer(Protocol):
    """A named recipe: how to turn a node's inputs into arrays, and which torch model learns them.

    The fabric owns the rest: Ray Train workers, the epoch loop (Adam on `loss`), a checkpoint per
    epoch, resume, metrics and MLflow. `defaults` lists every param the trainer takes; `check`
    reports bad values at submit time (pure, fast).
    """

    name: str
    defaults: Mapping[str, Any]

    def check(self, params: Mapping[str, Any]) -> list[str]: ...

    def prepare(self, inputs: Mapping[str, Any], params: Mapping[str, Any]) -> Prepared: ...

    def model(self, params: Mapping[str, Any], meta: Mapping[str, Any]) -> Any: ...
