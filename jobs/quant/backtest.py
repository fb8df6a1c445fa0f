"""Vectorised daily long-short backtest of a fitted model on the out-of-sample period."""

from __future__ import annotations

import json
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from jobs.quant._util import as_polars, maybe_context, report_progress
from jobs.quant.features import LABEL
from jobs.quant.model import daily_ic, predict


def target_weights(scored: pl.DataFrame, top_frac: float) -> pl.DataFrame:
    """Equal-weight long the top `top_frac` and short the bottom `top_frac` of `score` on each date.

    Each leg has gross weight 1 (long +1, short -1: dollar-neutral, gross exposure 2). Ties are
    broken by row order, so the input is sorted by (date, asset) for a deterministic result.
    """
    n = pl.len().over("date")
    k = (n.cast(pl.Float64) * top_frac).floor().clip(lower_bound=1.0)
    rank = pl.col("score").rank("ordinal").over("date").cast(pl.Float64)
    weight = (pl.when(rank > n - k).then(1.0 / k)
              .when(rank <= k).then(-1.0 / k)
              .otherwise(0.0))
    return scored.sort("date", "asset").with_columns(weight.alias("weight"))


def turnover_by_date(weights: pl.DataFrame) -> pl.DataFrame:
    """Sum over assets of |w_t - w_{t-1}| per date, starting from a flat book (columns date, turnover)."""
    wide = (weights.pivot(on="asset", index="date", values="weight", aggregate_function="first")
            .sort("date").fill_null(0.0))
    w = wide.drop("date").to_numpy()
    trades = np.abs(np.diff(w, axis=0, prepend=np.zeros((1, w.shape[1]))))
    return pl.DataFrame({"date": wide["date"], "turnover": trades.sum(axis=1)})


def run_backtest(feature_table: Any, model: dict[str, Any], top_frac: float = 0.2,
                 cost_bps: float = 5.0) -> pa.Table:
    """Node `backtest`: the daily PnL table of the model's long-short book on out-of-sample dates.

    On each date t >= the model's split date the book is rebalanced at the close to the target weights
    and earns the forward return to t+1; costs are `cost_bps` per unit of turnover. Columns: date,
    n_assets, n_long, n_short, gross_ret, turnover, cost, net_ret, ic (daily Spearman IC of the score).
    """
    if not 0.0 < top_frac <= 0.5:
        raise ValueError(f"top_frac must be in (0, 0.5], got {top_frac}")
    df = as_polars(feature_table).drop_nulls(LABEL)
    first_oos = date.fromisoformat(model["split_date"])
    oos = df.filter(pl.col("date") >= first_oos).sort("date", "asset")
    if oos.height == 0:
        raise ValueError(f"no out-of-sample rows on or after {first_oos}")
    report_progress(0.2, f"scoring {oos.height} out-of-sample rows")
    scored = oos.select("date", "asset", LABEL).with_columns(pl.Series("score", predict(oos, model)))
    book = target_weights(scored, top_frac)
    report_progress(0.6, "computing PnL")
    daily = (book.group_by("date")
             .agg(pl.len().alias("n_assets"),
                  (pl.col("weight") > 0).sum().alias("n_long"),
                  (pl.col("weight") < 0).sum().alias("n_short"),
                  (pl.col("weight") * pl.col(LABEL)).sum().alias("gross_ret"))
             .join(turnover_by_date(book), on="date")
             .join(daily_ic(scored, "score"), on="date")
             .with_columns((pl.col("turnover") * cost_bps / 1e4).alias("cost"))
             .with_columns((pl.col("gross_ret") - pl.col("cost")).alias("net_ret"))
             .select("date", pl.col("n_assets", "n_long", "n_short").cast(pl.Int64),
                     "gross_ret", "turnover", "cost", "net_ret", "ic")
             .sort("date"))
    ctx = maybe_context()
    if ctx is not None:  # the run page draws it (docs/ui.md#charts); a plain call writes nothing
        write_equity(daily, ctx.artifact_dir / EQUITY_FILE)
    report_progress(1.0, f"{daily.height} days, mean net {daily['net_ret'].mean():.5f}")
    return daily.to_arrow()


EQUITY_FILE = "equity.chart.json"


def equity_chart(daily: pl.DataFrame) -> dict[str, Any]:
    """The equity curve as a chart file (docs/ui.md#charts): one point per PnL day, the cumulative product of
    1 + the daily return, net and gross of costs; `pnl` carries the daily net returns themselves."""
    net = np.cumprod(1.0 + daily["net_ret"].to_numpy().astype(np.float64))
    gross = np.cumprod(1.0 + daily["gross_ret"].to_numpy().astype(np.float64))
    return {"title": "equity curve (out of sample, from 1.0)", "x_label": "date", "y_label": "equity",
            "x": [d.isoformat() for d in daily["date"].to_list()],
            "series": [{"name": "net of costs", "y": _finite(net)}, {"name": "gross", "y": _finite(gross)}],
            "pnl": _finite(daily["net_ret"].to_numpy())}


def _finite(values: np.ndarray) -> list[float | None]:
    return [float(v) if np.isfinite(v) else None for v in values]  # JSON has no NaN: a gap in the line


def write_equity(daily: pl.DataFrame, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(equity_chart(daily), allow_nan=False) + "\n")
