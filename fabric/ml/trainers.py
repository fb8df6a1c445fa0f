"""The trainer registry: names a spec may use in `params.trainer`, and the contract a trainer meets."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import entry_points
from typing import Any, Protocol, runtime_checkable

from fabric.errors import ErrorCode, FabricError

ENTRY_POINT_GROUP = "fabric.trainers"
_registered: dict[str, Trainer] = {}


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


def register_trainer(trainer: Trainer) -> None:
    """Register a trainer in this process (tests, notebooks on a local Ray whose workers import the
    same module). Workers elsewhere find trainers through the `fabric.trainers` entry points."""
    _registered[trainer.name] = trainer
    available_trainers.cache_clear()


@lru_cache(maxsize=1)
def available_trainers() -> dict[str, Trainer]:
    from fabric.ml.bilstm import BiLstmTrainer  # no torch here: the module imports it lazily

    trainers: dict[str, Trainer] = {"bilstm": BiLstmTrainer()}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        found = entry.load()
        trainers[entry.name] = found() if isinstance(found, type) else found
    trainers.update(_registered)
    return trainers


def get_trainer(name: str) -> Trainer:
    try:
        return available_trainers()[name]
    except KeyError:
        raise FabricError(f"no trainer named {name!r}", code=ErrorCode.KIND_PARAMS, where="params.trainer",
                          fix=f"use one of: {', '.join(sorted(available_trainers()))}, or register yours "
                              f"in the {ENTRY_POINT_GROUP!r} entry points") from None

