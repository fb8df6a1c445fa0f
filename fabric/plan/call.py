"""`NodeCall`: one attempt of one plan node, as the worker receives it (kinds and ML code both take one)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fabric.plan.model import ResourceUnit


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
    secrets: tuple[str, ...] = ()  # the scopes the submission listed (runtime_params.secrets_scope)
    # The values the head read for this attempt (fabric/secrets.py). The backend sends them beside the pickled
    # call, never inside it, and nothing records a NodeCall; never shown by repr.
    secret_values: Mapping[str, Mapping[str, str]] = field(default_factory=dict, repr=False, compare=False)
    grant: str = ""  # this attempt's capability for its own progress, log and stop calls (fabric/capability.py)
    when: str | None = None  # its condition: evaluated in the worker on the inputs named "?<key>" (spec/conditions)
    when_params: Mapping[str, Any] = field(default_factory=dict)  # the pipeline params the condition reads
    on_skipped: str = "skip"  # an input from a SKIPPED node: skip this node too, or "run" it without the input
    batch_over: str | None = None  # a map child with a batch: this input is a list, and the code runs once per item
    device: str = ""  # "gpu" or "cpu" for GPU-first work with a CPU fallback: which one it got
    run_outcome: Mapping[str, Any] | None = None  # an exit hook's: the run's outcome (schedule/exits.run_outcome)
