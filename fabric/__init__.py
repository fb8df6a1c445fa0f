"""fabric: DAGs of quant and ML work on Ray — `import fabric as fb`.

Importing fabric starts nothing and does not import Ray; `fb.connect()` does.
"""

from __future__ import annotations

from fabric.builder import DAG, dag, task, when
from fabric.connection import connect
from fabric.context import context, local_context
from fabric.errors import ErrorCode, FabricError, SpecError
from fabric.protocol import Client, Submission
from fabric.record import SubmissionStatus
from fabric.spec import DagSpec, RuntimeParams, load_spec
from fabric.states import NodeState, SubmissionState

__all__ = ["DAG", "Client", "DagSpec", "ErrorCode", "FabricError", "NodeState", "RuntimeParams", "SpecError",
           "Submission", "SubmissionState", "SubmissionStatus", "connect", "context", "dag", "load_spec",
           "local_context", "task", "when"]
