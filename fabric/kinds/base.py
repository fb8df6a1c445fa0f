"""The node-kind protocol: how a kind checks its node at submit time and runs it inside a worker.

`NodeCall` lives in `fabric.plan.call` (so `fabric.ml` can take one without importing the kinds) and is
re-exported here for kind authors.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from fabric.errors import ErrorCode, Problem
from fabric.plan.call import NodeCall
from fabric.spec import NodeSpec

__all__ = ["Kind", "NodeCall", "params_problem"]


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
