"""Node kinds that run in this build, and the registry through which more plug in."""

from __future__ import annotations

from functools import lru_cache
from importlib.metadata import entry_points

from fabric.errors import ErrorCode, FabricError
from fabric.kinds.base import Kind, NodeCall
from fabric.kinds.finetune import FinetuneKind
from fabric.kinds.llm import LlmGenerateKind
from fabric.kinds.llm_serve import LlmServeKind
from fabric.kinds.promote import PromoteKind
from fabric.kinds.python_task import PythonTask
from fabric.kinds.rag import EmbedKind, RagIndexKind, RagQueryKind
from fabric.kinds.serve_kind import ServeKind
from fabric.kinds.sql import SqlTask
from fabric.kinds.train import TrainKind
from fabric.kinds.tune import TuneKind
from fabric.plan.compile import KindCheck

ENTRY_POINT_GROUP = "fabric.kinds"
_registered: dict[str, Kind] = {}


def register_kind(kind: Kind) -> None:
    """Register a kind in this process. Workers find kinds through the `fabric.kinds` entry points,
    so a kind shipped in a package must also be declared there to run on a cluster."""
    _registered[kind.name] = kind
    available_kinds.cache_clear()


@lru_cache(maxsize=1)
def available_kinds() -> dict[str, Kind]:
    builtin = (PythonTask(), SqlTask(), TrainKind("train"), TrainKind("ray_job"), TuneKind(), ServeKind(),
               PromoteKind(), LlmGenerateKind(), EmbedKind(), RagIndexKind(), RagQueryKind(), LlmServeKind(),
               FinetuneKind())
    kinds: dict[str, Kind] = {k.name: k for k in builtin}
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        kind = entry.load()
        kinds[entry.name] = kind() if isinstance(kind, type) else kind
    kinds.update(_registered)
    return kinds


def get_kind(name: str) -> Kind:
    try:
        return available_kinds()[name]
    except KeyError:
        raise FabricError(f"kind {name!r} has no executor here", code=ErrorCode.KIND_NOT_RUNNABLE,
                          fix=f"use one of: {', '.join(sorted(available_kinds()))}") from None


def kind_checks() -> dict[str, KindCheck]:
    """Kind name -> a submit-time checker, in the shape `fabric.plan.compile_plan` takes."""
    return {name: kind.check for name, kind in available_kinds().items()}


__all__ = ["Kind", "NodeCall", "available_kinds", "get_kind", "kind_checks", "register_kind"]
