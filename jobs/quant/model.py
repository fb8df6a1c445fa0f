"""Ridge regression (numpy) of the forward return on cross-sectional features over the train period."""

from __future__ import annotations

import math
from collections.abc import Sequence
from datetime import date
from typing import Any

import numpy as np
import polars as pl

from jobs.quant._util import as_polars, report_progress
from jobs.quant.features import LABEL, model_feature_names


def split_date(dates: pl.Series, train_frac: float) -> date:
    """The first out-of-sample date: dates before it (a `train_frac` share of them) are the train period."""
    if not 0.0 < train_frac < 1.0:
        raise ValueError(f"train_frac must be in (0, 1), got {train_frac}")
    unique = dates.unique().sort()
    if unique.len() < 2:
        raise ValueError("need at least two dates to split")
    index = min(max(int(unique.len() * train_frac), 1), unique.len() - 1)
    return unique[index]


def predict(df: pl.DataFrame, model: dict[str, Any]) -> np.ndarray:
    """The model's score for every row of a feature frame."""
    x = df.select(model["features"]).to_numpy().astype(np.float64)
    return x @ np.asarray(model["coef"], dtype=np.float64) + float(model.get("intercept", 0.0))


def daily_ic(df: pl.DataFrame, score: str, target: str = LABEL) -> pl.DataFrame:
    """Per-date Spearman rank correlation between `score` and `target` (columns date, ic)."""
    return (df.group_by("date")
            .agg(pl.corr(score, target, method="spearman").alias("ic"))
            .sort("date")
            .with_columns(pl.col("ic").fill_nan(None)))


def fit_model(feature_table: Any, train_frac: float = 0.6, ridge: float = 1.0,
              features: Sequence[str] | None = None) -> dict[str, dict[str, Any]]:
    """Node `fit`: ridge-regress the per-date demeaned forward return on the `z_*` features.

    Returns `{"model": ..., "fit_metrics": ...}` (the node's two outs). The model holds the feature
    names, coefficients and the split date; rows dated on or after the split are never looked at.
    """
    df = as_polars(feature_table).drop_nulls(LABEL)
    names = list(features) if features else model_feature_names(df.columns)
    if not names:
        raise ValueError("no feature columns to fit on (expected z_* columns)")
    first_oos = split_date(df["date"], train_frac)
    train = df.filter(pl.col("date") < first_oos).with_columns(
        (pl.col(LABEL) - pl.col(LABEL).mean().over("date")).alias("_target"))
    report_progress(0.2, f"fitting ridge on {train.height} rows, {len(names)} features")
    x = train.select(names).to_numpy().astype(np.float64)
    y = train["_target"].to_numpy().astype(np.float64)
    gram = x.T @ x + float(ridge) * np.eye(len(names))
    coef = np.linalg.solve(gram, x.T @ y)
    fitted = x @ coef
    ss_res = float(np.sum((y - fitted) ** 2))
    ss_tot = float(np.sum(y ** 2))
    ic = daily_ic(train.with_columns(pl.Series("_score", fitted)), "_score", "_target")["ic"].drop_nulls()
    ic_mean = float(ic.mean()) if ic.len() else 0.0
    ic_std = float(ic.std()) if ic.len() > 1 else 0.0
    model = {
        "kind": "ridge",
        "features": names,
        "coef": [float(c) for c in coef],
        "intercept": 0.0,
        "ridge": float(ridge),
        "target": f"{LABEL} demeaned per date",
        "train_frac": float(train_frac),
        "split_date": first_oos.isoformat(),
    }
    fit_metrics = {
        "in_sample_ic": ic_mean,
        "in_sample_ic_ir": ic_mean / ic_std * math.sqrt(252.0) if ic_std > 0 else 0.0,
        "in_sample_r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else 0.0,
        "n_train_rows": int(train.height),
        "n_train_days": int(train["date"].n_unique()),
        "split_date": first_oos.isoformat(),
    }
    report_progress(1.0, f"in-sample IC {ic_mean:.4f}, split at {first_oos.isoformat()}")
    return {"model": model, "fit_metrics": fit_metrics}
