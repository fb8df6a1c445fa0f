"""The DAG spec v1 contract: models, loading, graph validation and JSON Schema (never imports Ray)."""

from fabric.spec.kinds import KNOWN_KINDS
from fabric.spec.load import load_spec, parse_runtime_params, read_document, read_spec
from fabric.spec.mapping import MapSpec
from fabric.spec.models import (
    Affinity,
    DagResources,
    DagSpec,
    Edge,
    NodeSpec,
    Priority,
    Qos,
    Resources,
    Retry,
    RuntimeEnvSpec,
    RuntimeParams,
    Slo,
)
from fabric.spec.names import split_input
from fabric.spec.schema import dag_json_schema, runtime_params_json_schema
from fabric.spec.validate import graph_problems, topological_order

__all__ = [
    "KNOWN_KINDS",
    "Affinity",
    "DagResources",
    "DagSpec",
    "Edge",
    "MapSpec",
    "NodeSpec",
    "Priority",
    "Qos",
    "Resources",
    "Retry",
    "RuntimeEnvSpec",
    "RuntimeParams",
    "Slo",
    "dag_json_schema",
    "graph_problems",
    "load_spec",
    "parse_runtime_params",
    "read_document",
    "read_spec",
    "runtime_params_json_schema",
    "split_input",
    "topological_order",
]
