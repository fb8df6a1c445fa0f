"""The quant_backtest DAG run in-process as plain calls: the engine's reference result."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import yaml

from fabric.context import local_context
from jobs.quant._util import as_polars
from jobs.quant.backtest import run_backtest
from jobs.quant.data import generate_market_data
from jobs.quant.features import build_features
from jobs.quant.model import fit_model
from jobs.quant.report import make_report

DAG_PATH = Path(__file__).resolve().parents[1] / "dags" / "quant_backtest.yaml"


def load_dag(path: str | Path = DAG_PATH) -> dict[str, Any]:
    """The DAG YAML as a plain dict."""
    with open(path, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def node_params(dag: dict[str, Any], run_params: dict[str, Any] | None = None) -> dict[str, dict[str, Any]]:
    """Each node's `params` (an empty dict when it has none), keyed by node id, with the pipeline's
    `{{ params.NAME }}` references resolved from `run_params` and the declared defaults, as a submission's."""
    from fabric.spec import load_spec
    from fabric.spec.params import resolve_params, substitute

    resolved, problems = resolve_params(load_spec(dag).params, run_params)
    if problems:
        raise ValueError("; ".join(f"{p.where}: {p.message}" for p in problems))
    return {node["id"]: substitute(dict(node.get("params") or {}), resolved) for node in dag["nodes"]}


def _as_lazy(value: Any) -> pl.LazyFrame:
    if isinstance(value, str | Path):
        return pl.scan_parquet(str(value))
    if isinstance(value, pl.LazyFrame):
        return value
    return as_polars(value).lazy()


def run_sql(query: str, **tables: Any) -> pa.Table:
    """Run Polars SQL with each keyword registered as a table, as the `sql` node kind does."""
    ctx = pl.SQLContext({name: _as_lazy(value) for name, value in tables.items()})
    return ctx.execute(query, eager=False).collect().to_arrow()


def run_locally(workdir: str | Path, dag_path: str | Path = DAG_PATH,
                overrides: dict[str, dict[str, Any]] | None = None,
                run_params: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run every node of the quant_backtest DAG in this process and return the `metrics` out.

    Params (and the SQL query) come from the DAG YAML so the two cannot drift; `overrides` maps a node
    id to params that replace the YAML's (e.g. a smaller `make_data` for a quick run). Each node gets its
    own `local_context` with artifact dir `workdir/<node id>`.
    """
    workdir = Path(workdir)
    params = node_params(load_dag(dag_path), run_params)
    for node_id, extra in (overrides or {}).items():
        params[node_id].update(extra)

    with local_context(workdir / "make_data", node_id="make_data"):
        raw_prices = generate_market_data(**params["make_data"])
    with local_context(workdir / "clean_prices", node_id="clean_prices"):
        sql_params = dict(params["clean_prices"])
        prices = run_sql(sql_params.pop("query"), raw_prices=raw_prices)
    with local_context(workdir / "features", node_id="features"):
        feature_table = build_features(prices, **params["features"])
    with local_context(workdir / "fit", node_id="fit"):
        fitted = fit_model(feature_table, **params["fit"])
    with local_context(workdir / "backtest", node_id="backtest"):
        pnl = run_backtest(feature_table, fitted["model"], **params["backtest"])
    with local_context(workdir / "report", node_id="report"):
        return make_report(pnl, fitted["fit_metrics"], **params["report"])
