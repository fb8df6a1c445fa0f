"""Small helpers shared by the quant nodes: table coercion and an optional node context."""

from __future__ import annotations

from typing import Any

import polars as pl
import pyarrow as pa

from fabric.context import NodeContext, context
from fabric.errors import FabricError


def as_polars(table: Any) -> pl.DataFrame:
    """A polars DataFrame from a pyarrow Table, a polars (Lazy)DataFrame or a Parquet path."""
    if isinstance(table, pl.DataFrame):
        return table
    if isinstance(table, pl.LazyFrame):
        return table.collect()
    if isinstance(table, pa.Table):
        out = pl.from_arrow(table)
        assert isinstance(out, pl.DataFrame)
        return out
    if isinstance(table, str):
        return pl.read_parquet(table)
    raise TypeError(f"expected a pyarrow.Table, polars DataFrame or Parquet path, got {type(table).__name__}")


def maybe_context() -> NodeContext | None:
    """The running node's context, or None when called as a plain function outside a node."""
    try:
        return context()
    except FabricError:
        return None


def report_progress(fraction: float, message: str) -> None:
    """Report progress and log the message when running inside a node; a no-op otherwise."""
    ctx = maybe_context()
    if ctx is not None:
        ctx.progress(fraction, message)
        ctx.logger.info("%s (%.0f%%)", message, 100 * fraction)


def cs_zscore(col: str, clip: float = 3.0) -> pl.Expr:
    """Cross-sectional z-score of `col` within each date, clipped to +-clip (0 if no spread)."""
    x = pl.col(col)
    z = (x - x.mean().over("date")) / x.std().over("date")
    return z.fill_nan(0.0).fill_null(0.0).clip(-clip, clip)
