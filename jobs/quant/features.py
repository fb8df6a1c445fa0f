"""Per-asset time-series features, cross-sectional z-scores/ranks and the forward 1-day return label."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import polars as pl
import pyarrow as pa

from jobs.quant._util import as_polars, cs_zscore, report_progress

LABEL = "fwd_ret_1d"
FUNDAMENTALS = ("earnings_yield", "book_to_price")


def raw_feature_names(lookbacks: Sequence[int] = (5, 20, 60), vol_window: int = 20) -> list[str]:
    """Names of the per-asset features, in output order."""
    return [f"mom_{lb}" for lb in lookbacks] + [f"vol_{vol_window}", "volume_z", *FUNDAMENTALS]


def model_feature_names(columns: Sequence[str]) -> list[str]:
    """The cross-sectional z-scored columns (`z_*`) a model trains on, in column order."""
    return [c for c in columns if c.startswith("z_")]


def build_features(prices: Any, lookbacks: Sequence[int] = (5, 20, 60), vol_window: int = 20) -> pa.Table:
    """Node `features`: a feature table, one row per (date, asset), sorted by (date, asset).

    Every feature at date t uses data up to and including t only; the label `fwd_ret_1d` is the return
    from the close at t to the close at t+1 (null on each asset's last day). Rows inside the warm-up
    window (the longest lookback) are dropped. Columns: date, asset, close, the raw features
    (`mom_<L>`, `vol_<W>`, `volume_z`, fundamentals), `z_<f>` (per-date z-score, clipped to +-3),
    `rank_<f>` (per-date percentile rank in [0, 1]) and the label.
    """
    lookbacks = [int(lb) for lb in lookbacks]
    if not lookbacks or min(lookbacks) < 1 or vol_window < 2:
        raise ValueError("lookbacks must be positive and vol_window at least 2")
    df = as_polars(prices).sort("asset", "date")
    report_progress(0.1, f"building features for {df.height} rows")
    close = pl.col("close")
    if "ret_1d" not in df.columns:
        df = df.with_columns((close / close.shift(1) - 1.0).over("asset").alias("ret_1d"))
    log_volume = pl.col("volume").cast(pl.Float64).log()
    df = df.with_columns(
        *[(close / close.shift(lb) - 1.0).over("asset").alias(f"mom_{lb}") for lb in lookbacks],
        pl.col("ret_1d").rolling_std(vol_window).over("asset").alias(f"vol_{vol_window}"),
        ((log_volume - log_volume.rolling_mean(vol_window)) / log_volume.rolling_std(vol_window))
        .over("asset").alias("volume_z"),
        (close.shift(-1) / close - 1.0).over("asset").alias(LABEL),
    )
    raw = raw_feature_names(lookbacks, vol_window)
    df = df.drop_nulls(raw).filter(pl.all_horizontal(pl.col(raw).is_finite()))
    report_progress(0.6, "cross-sectional normalisation")
    df = df.with_columns(
        *[cs_zscore(f).alias(f"z_{f}") for f in raw],
        *[((pl.col(f).rank("average") - 1.0) / (pl.len() - 1).clip(lower_bound=1)).over("date")
          .alias(f"rank_{f}") for f in raw],
    )
    out = df.select(
        "date", "asset", "close", *raw, *[f"z_{f}" for f in raw], *[f"rank_{f}" for f in raw], LABEL,
    ).sort("date", "asset")
    report_progress(1.0, f"{out.height} feature rows, {len(raw)} features")
    return out.to_arrow()
