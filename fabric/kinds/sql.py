"""Kind `sql`: Polars SQL over upstream tables (Arrow, Polars or Parquet paths), producing an Arrow table."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fabric.errors import Problem
from fabric.kinds.base import NodeCall, params_problem
from fabric.spec import NodeSpec
from fabric.tables import as_lazy_frame


class SqlTask:
    name = "sql"

    def check(self, node: NodeSpec, where: str) -> list[Problem]:
        problems = []
        query = node.params.get("query")
        if not isinstance(query, str) or not query.strip():
            problems.append(params_problem(f"{where}.params.query", f"sql node {node.id!r} has no query",
                                           "set params.query to a SELECT over the node's ins"))
        unknown = sorted(set(node.params) - {"query"})
        if unknown:
            problems.append(params_problem(f"{where}.params", f"unknown sql params {unknown}",
                                           "sql takes only params.query; inputs are its ins, by name"))
        if len(node.outs) > 1:
            problems.append(params_problem(f"{where}.outs", "a sql node produces exactly one table",
                                           "declare one out"))
        return problems

    def run(self, call: NodeCall, inputs: Mapping[str, Any]) -> Any:
        import polars as pl

        frames = {name: as_lazy_frame(value, name) for name, value in inputs.items()}
        with pl.SQLContext(frames=frames, eager=False) as sql:
            result = sql.execute(call.params["query"])
        return result.collect().to_arrow()
