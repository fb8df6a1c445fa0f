"""The trainer registry: names a spec may use in `params.trainer` (the contract a trainer meets is in `base`)."""

from __future__ import annotations

from functools import lru_cache
from importlib.metadata import entry_points

from fabric.errors import ErrorCode, FabricError
from fabric.ml.base import Trainer

ENTRY_POINT_GROUP = "fabric.trainers"
_registered: dict[str, Trainer] = {}


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

