"""The node-kind protocol: how a kind checks its node at submit time and runs it inside a worker."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

from fabric.errors import ErrorCode, Problem
from fabric.plan.model import ResourceUnit
from fabric.spec import NodeSpec


@dataclass(frozen=True)
class NodeCall:
    """What a worker needs to run one attempt of one node; small, because it travels per task."""

    submission_id: str
    pipeline_id: str
    node_id: str
    attempt: int
    kind: str
    entrypoint: str | None
    params: Mapping[str, Any]
    input_names: tuple[str, ...]
    result_slots: tuple[str, ...]
    declared_outs: tuple[str, ...]
    home: str
    control: tuple[str, str] | None = None  # (registry actor name, namespace) for progress and cancel
    inline_code: bool = False  # the first input is the pickled function (defined in a notebook)
    persist: tuple[str, ...] = ()  # outs a downstream node needs: written to the artifact store on success
    artifacts: str = ""  # the artifact store's root (a local dir or a pyarrow.fs URI)
    unit: ResourceUnit | None = None  # the node's resources in Ray units (distributed kinds size workers by it)
    team: str | None = None  # the submission's team, for tags (MLflow) and accounting
    digest: bool = False  # report a digest of each output value (a cache key reads them)
    secrets: tuple[str, ...] = ()  # scope names only: values are read on the node (fabric/secrets.py)
    device: str = ""  # "gpu" or "cpu" for GPU-first work with a CPU fallback: which one it got


@runtime_checkable
class Kind(Protocol):
    """A node kind. `check` runs at submit time (pure, fast); `run` runs inside a Ray worker.

    `run` receives the node's params and its inputs by name and returns the node's value: a single
    value for one out, or a dict keyed by the declared outs. A kind that needs Ray (training, tuning,
    serving) may call Ray from `run`; the runner never changes for a new kind.
    """

    name: str

    def check(self, node: NodeSpec, where: str) -> list[Problem]: ...

    def run(self, call: NodeCall, inputs: Mapping[str, Any]) -> Any: ...


def params_problem(where: str, message: str, fix: str) -> Problem:
    return Problem(ErrorCode.KIND_PARAMS, where, message, fix)
