"""fabric: DAGs of quant and ML work on Ray — `import fabric as fb`.

Importing fabric starts nothing and does not import Ray; `fb.connect()` does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fabric.builder import DAG, task
from fabric.context import context, local_context
from fabric.errors import ErrorCode, FabricError, SpecError
from fabric.record import SubmissionStatus
from fabric.spec import DagSpec, RuntimeParams, load_spec
from fabric.states import NodeState, SubmissionState

if TYPE_CHECKING:
    from fabric.client import Client, Submission, connect

_LAZY = {"connect", "Client", "Submission"}


def __getattr__(name: str) -> Any:
    # The Ray-facing names load on first use so that `import fabric` stays light and side-effect free.
    if name in _LAZY:
        from fabric import client

        return getattr(client, name)
    raise AttributeError(f"module 'fabric' has no attribute {name!r}")


__all__ = ["DAG", "Client", "DagSpec", "ErrorCode", "FabricError", "NodeState", "RuntimeParams", "SpecError",
           "Submission", "SubmissionState", "SubmissionStatus", "connect", "context", "load_spec",
           "local_context", "task"]
