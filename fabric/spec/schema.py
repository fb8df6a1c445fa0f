"""JSON Schemas of the DAG spec v1 and of runtime params, for editors, docs and clients."""

from __future__ import annotations

from typing import Any

from fabric.spec.models import DagSpec, RuntimeParams

DAG_SCHEMA_ID = "https://fabric.dev/schemas/dag-spec-v1.json"
RUNTIME_PARAMS_SCHEMA_ID = "https://fabric.dev/schemas/runtime-params-v1.json"
_DRAFT = "https://json-schema.org/draft/2020-12/schema"


def _with_header(schema: dict[str, Any], schema_id: str, title: str) -> dict[str, Any]:
    return {"$schema": _DRAFT, "$id": schema_id, **schema, "title": title}


def dag_json_schema() -> dict[str, Any]:
    """The JSON Schema of a DAG spec v1 (fields by alias: edges use `from`)."""
    return _with_header(DagSpec.model_json_schema(by_alias=True), DAG_SCHEMA_ID, "Fabric DAG spec v1")


def runtime_params_json_schema() -> dict[str, Any]:
    """The JSON Schema of the runtime params given with a submission."""
    return _with_header(RuntimeParams.model_json_schema(by_alias=True), RUNTIME_PARAMS_SCHEMA_ID,
                        "Fabric runtime params v1")
