"""Tabular node inputs (Arrow, Polars, or Parquet paths) as a Polars LazyFrame: shared by `sql` and the trainers."""

from __future__ import annotations

from typing import Any


def as_lazy_frame(value: Any, name: str) -> Any:
    """`value` as a Polars LazyFrame; `name` says which input it is when it is none of those."""
    import polars as pl
    import pyarrow as pa

    if isinstance(value, pl.LazyFrame):
        return value
    if isinstance(value, pl.DataFrame):
        return value.lazy()
    if isinstance(value, pa.Table):
        frame = pl.from_arrow(value)  # a Table makes a DataFrame (only an Array makes a Series)
        assert isinstance(frame, pl.DataFrame)
        return frame.lazy()
    if isinstance(value, str | list):
        return pl.scan_parquet(value)
    raise TypeError(f"input {name!r} is a {type(value).__name__}; sql reads Arrow or Polars tables "
                    "or Parquet paths")
