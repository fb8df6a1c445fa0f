"""The DAG spec v1 and runtime params as pydantic models: the contract users write against."""

from __future__ import annotations

import math
import re
from enum import StrEnum
from functools import cached_property
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from fabric.spec.exits import OnExit
from fabric.spec.expr import MAX_LENGTH, ExprError, parse
from fabric.spec.kinds import KNOWN_KINDS
from fabric.spec.mapping import MapSpec
from fabric.spec.names import (
    CUSTOM_RESOURCE_PATTERN,
    Entrypoint,
    InputName,
    IoName,
    NodeId,
    ParamName,
    PipelineId,
    SubmissionId,
)
from fabric.spec.names import check_env_names as _check_env_names
from fabric.spec.names import fail as _fail
from fabric.spec.notify import NotifySpec
from fabric.spec.params import ParamSpec
from fabric.spec.quantities import Cpu, Duration, Gpu, Memory

MAX_NODES = 10_000

# load_spec's validation-context flag: it checks the graph on the raw input, to report it with field problems.
SKIP_GRAPH_CHECK = "fabric.spec.skip_graph_check"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Priority(StrEnum):
    """How urgent a DAG or submission is; compare with `.rank`."""

    LOW = "low"
    NORMAL = "normal"
    HIGH = "high"
    CRITICAL = "critical"

    @property
    def rank(self) -> int:
        """0 for low up to 3 for critical: higher runs first."""
        return _PRIORITY_RANK[self]


_PRIORITY_RANK = {Priority.LOW: 0, Priority.NORMAL: 1, Priority.HIGH: 2, Priority.CRITICAL: 3}


class Qos(StrEnum):
    """Whether work may run on preemptible (spot) capacity."""

    SPOT_OK = "spot_ok"
    ON_DEMAND = "on_demand"


class Retry(_Model):
    """How often and how patiently a failed node is retried."""

    max_attempts: int = Field(1, ge=1, le=100, description="Total attempts, including the first.")
    backoff_sec: float = Field(0, ge=0, le=86_400, description="Wait before the first retry.")
    backoff_factor: float = Field(2.0, ge=1, le=10, description="Multiplier of the wait per retry.")
    max_backoff_sec: float = Field(600, ge=0, description="Upper bound of the wait between attempts.")


class Slo(_Model):
    """Service-level objectives; on a node they override the DAG's."""

    max_runtime: Duration | None = None
    retry: Retry | None = None
    priority: Priority | None = None
    qos: Qos | None = None
    deadline: Duration | None = Field(None, description="DAG only: running this long is an SLA miss (notify.md).")

    @field_validator("max_runtime", "deadline")
    @classmethod
    def _positive_runtime(cls, value: float | None, info: ValidationInfo) -> float | None:
        if value is not None and value <= 0:
            raise _fail(f"{info.field_name} must be positive", "use a duration like '2h' or '15m'", "spec_quantity")
        return value


class PlacementStrategy(StrEnum):
    """How a multi-worker or multi-GPU node's placement group spreads its bundles (Ray's strategies)."""

    PACK = "PACK"
    STRICT_PACK = "STRICT_PACK"
    SPREAD = "SPREAD"
    STRICT_SPREAD = "STRICT_SPREAD"


class CpuFallback(_Model):
    """GPU first, CPU after a wait: with admission on, a node that gets no GPU within `after` runs on CPU."""

    cpu: Cpu | None = Field(None, description="CPUs to use without a GPU (default: the node's cpu).")
    after: Duration | None = Field(None, description="How long to wait for a GPU (default: the scheduling "
                                                       "config's gpu_fallback_after_s, 5m).")


class Resources(_Model):
    """What one node needs; unset fields fall back to the DAG default."""

    cpu: Cpu | None = None
    mem: Memory | None = None
    gpu: Gpu | None = None
    gpu_mem: Memory | None = None
    custom: dict[str, float] = Field(default_factory=dict, description="Custom Ray resources by name.")
    workers: int | None = Field(None, ge=1, le=1024, description="Worker count for distributed kinds.")
    placement: PlacementStrategy | None = Field(None, description="Placement group strategy for its workers' bundles "
                                                         "(default PACK; one multi-GPU worker: STRICT_PACK).")
    fallback: CpuFallback | None = Field(None, description="Run on CPU when no GPU frees up within a wait.")

    @model_validator(mode="after")
    def _fallback_needs_gpu(self) -> Resources:
        if self.fallback is not None and not self.gpu:
            raise _fail("fallback is a CPU fallback for GPU work, but this node asks for no GPU",
                        "set gpu (e.g. gpu: 1) beside fallback, or remove fallback")
        return self

    @field_validator("custom")
    @classmethod
    def _check_custom(cls, custom: dict[str, float]) -> dict[str, float]:
        for name, amount in custom.items():
            if not re.match(CUSTOM_RESOURCE_PATTERN, name):
                raise _fail(f"{name!r} is not a valid custom resource name",
                            "use a name like 'accelerator_x'")
            if not math.isfinite(amount) or amount < 0:
                raise _fail(f"custom resource {name!r} must be a finite number >= 0 (got {amount!r})",
                            "use a value like 1 or 0.5", "spec_quantity")
        return custom


class DagResources(_Model):
    """DAG-wide resource settings."""

    default: Resources | None = None


_KIND_NAMES: list[JsonValue] = [*sorted(KNOWN_KINDS)]


class NodeSpec(_Model):
    """One unit of work: its kind, parameters, wiring and requirements."""

    id: NodeId
    kind: str = Field(json_schema_extra={"enum": _KIND_NAMES})
    params: dict[str, Any] = Field(default_factory=dict)
    ins: list[InputName] = Field(default_factory=list,
                                 description="Outs of exactly one ancestor each, as `name` or `param=name`.")
    outs: list[IoName] = Field(default_factory=list, description="Names this node produces.")
    resources: Resources | None = None
    env: dict[str, str] = Field(default_factory=dict)
    entrypoint: Entrypoint | None = None
    image: str | None = Field(None, min_length=1)
    slo: Slo | None = None
    pool: str | None = Field(None, min_length=1, max_length=128)
    cache: bool | Literal["shared"] = Field(
        False, description="true: reuse this team's identical finished node; 'shared': the cache shared between "
                           "teams (a grant, see docs/gateway.md#grants)")
    fuse: bool = Field(True, description="May the planner run it in one Ray task with its chain neighbours "
                                         "(fabric/plan/fuse.py); false keeps it a Ray task of its own.")
    on_exit: OnExit | None = Field(None, description="An exit hook: runs once every other node has ended, "
                                   "always, or on the run's success or failure (docs/spec.md#exit-hooks).")
    description: str | None = None
    when: str | None = Field(None, min_length=1, max_length=MAX_LENGTH,
                             description="Run only if this condition over upstream outs and params is true, "
                                         "else SKIPPED (docs/spec.md#conditions-when).")
    on_skipped: Literal["skip", "run"] = Field(
        "skip", description="When an upstream node was SKIPPED: skip this node too, or run it without that input.")

    @field_validator("when")
    @classmethod
    def _parses(cls, when: str | None) -> str | None:
        if when is not None:
            try:
                parse(when)
            except ExprError as exc:
                raise _fail(f"not a condition: {exc}", "write e.g. `best_sharpe > 0 and params.mode == \"full\"` "
                            "(the grammar: docs/spec.md#conditions-when)", "spec_condition") from None
        return when
    map: MapSpec | None = Field(None, description="Fan out over an input known at run time: one child per item "
                                                  "(docs/spec.md#map).")

    @field_validator("kind")
    @classmethod
    def _known_kind(cls, kind: str) -> str:
        if kind not in KNOWN_KINDS:
            # The did-you-mean hint costs more than the check: spec/problems.py adds it, to listed problems only.
            raise PydanticCustomError("unknown_kind", f"unknown kind {kind[:200]!r}", {"kind": kind[:200]})
        return kind

    @field_validator("ins", "outs")
    @classmethod
    def _no_duplicates(cls, names: list[str]) -> list[str]:
        seen: set[str] = set()
        for entry in names:
            name = entry.partition("=")[0]  # ins: the keyword argument must be unique
            if name in seen:
                raise _fail(f"{name!r} is listed twice", f"remove the second {name!r}")
            seen.add(name)
        return names

    @field_validator("env")
    @classmethod
    def _env_names(cls, env: dict[str, str]) -> dict[str, str]:
        return _check_env_names(env, "environment variable")


class Edge(_Model):
    """A dependency: `to` runs after `from` succeeds. Written as {from: a, to: b}."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    from_: str = Field(alias="from", min_length=1)
    to: str = Field(min_length=1)


class DagSpec(_Model):
    """A whole pipeline: nodes, the edges between them, DAG-wide SLO and default resources."""

    version: Literal[1]
    pipeline_id: PipelineId
    description: str | None = None
    slo: Slo | None = None
    resources: DagResources | None = None
    params: dict[ParamName, ParamSpec] = Field(
        default_factory=dict, description="Typed pipeline parameters; node params refer to them as "
                                          "'{{ params.NAME }}' and a run sets them in runtime_params.params.")
    nodes: list[NodeSpec] = Field(min_length=1, max_length=MAX_NODES)
    edges: list[Edge] = Field(default_factory=list, description="Omitted: derived from the nodes' ins and outs.")
    notify: NotifySpec | None = Field(None, description="Webhooks on run and node events (docs/notify.md).")

    @model_validator(mode="before")
    @classmethod
    def _derive_edges(cls, data: Any) -> Any:
        # Omitted edges are the data dependencies: users should not write every dependency twice.
        if isinstance(data, dict) and data.get("edges") is None and isinstance(data.get("nodes"), list):
            from fabric.spec.validate import derive_edges

            nodes = [n.model_dump() if isinstance(n, BaseModel) else n for n in data["nodes"]]
            return {**data, "edges": derive_edges({"nodes": nodes})}
        return data

    @model_validator(mode="after")
    def _check_graph(self, info: ValidationInfo) -> DagSpec:
        if info.context and info.context.get(SKIP_GRAPH_CHECK):
            return self
        from fabric.errors import SpecError
        from fabric.spec.validate import graph_problems

        problems = graph_problems(self)
        if problems:
            # Not a ValueError on purpose: it carries every problem, and pydantic lets it through as is.
            raise SpecError.from_problems(problems)
        return self

    @cached_property
    def _index(self) -> dict[str, NodeSpec]:
        return {node.id: node for node in self.nodes}

    def node(self, node_id: str) -> NodeSpec:
        """The node with this id; KeyError if there is none."""
        try:
            return self._index[node_id]
        except KeyError:
            raise KeyError(f"no node {node_id!r} in pipeline {self.pipeline_id!r}") from None

    def upstream(self, node_id: str) -> list[str]:
        """Direct parents of a node, in edge order."""
        self.node(node_id)
        return list(dict.fromkeys(e.from_ for e in self.edges if e.to == node_id))

    def downstream(self, node_id: str) -> list[str]:
        """Direct children of a node, in edge order."""
        self.node(node_id)
        return list(dict.fromkeys(e.to for e in self.edges if e.from_ == node_id))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict by alias, without defaults or None: what a user would write."""
        return self.model_dump(mode="json", by_alias=True, exclude_defaults=True)

    def to_yaml(self) -> str:
        """The spec as readable YAML that load_spec reads back to an equal DagSpec."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, allow_unicode=True)


class Affinity(_Model):
    """Where a submission prefers to run."""

    compute_pool: str | None = Field(None, min_length=1, max_length=128)


class RuntimeEnvSpec(_Model):
    """The Ray runtime_env keys a user may set: this model IS the allowlist."""

    working_dir: str | None = Field(None, min_length=1)
    py_modules: list[str] = Field(default_factory=list)
    env_vars: dict[str, str] = Field(default_factory=dict)

    @field_validator("env_vars")
    @classmethod
    def _no_ray_vars(cls, env_vars: dict[str, str]) -> dict[str, str]:
        return _check_env_names(env_vars, "environment variable")


class RuntimeParams(_Model):
    """Per-submission settings given next to a spec: idempotency key, environment, labels, priority."""

    submission_id: SubmissionId | None = Field(None, description="Idempotency key of the submission.")
    env: str | None = Field(None, pattern=r"^[A-Za-z][A-Za-z0-9_-]{0,63}$",
                            description="Deployment environment name such as 'staging' (not env vars).")
    labels: dict[str, str] = Field(default_factory=dict)
    secrets_scope: list[str] = Field(default_factory=list)
    priority: Priority | None = None
    affinity: Affinity | None = None
    ttl_days: float | None = Field(None, gt=0, le=3650)
    runtime_env: RuntimeEnvSpec | None = None
    team: str | None = Field(None, min_length=1, max_length=128)
    params: dict[str, JsonValue] = Field(default_factory=dict,
                                         description="Values of the pipeline's declared params, by name.")
    notify: NotifySpec | None = Field(None, description="This run's webhooks, besides the pipeline's.")

    @field_validator("env", mode="before")
    @classmethod
    def _env_is_a_name(cls, value: Any) -> Any:
        if isinstance(value, dict):
            raise _fail("env is the deployment environment name (e.g. 'staging'), not environment variables",
                        "put environment variables under runtime_env.env_vars")
        return value

    @field_validator("secrets_scope")
    @classmethod
    def _scope_names(cls, scopes: list[str]) -> list[str]:
        for scope in scopes:
            if not re.match(r"^[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}$", scope) or ".." in scope.split("/"):
                raise _fail(f"{scope!r} is not a valid secrets scope name", "use a name like 's3-lake-ro'")
        return scopes
