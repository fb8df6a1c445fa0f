"""Node `backtest` of the BiLSTM example: score out-of-sample windows with the trained model (loaded from MLflow
as pyfunc, as Serve will load it), trade the long-short book, and summarise the PnL like the quant example."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from fabric.context import context
from jobs.quant._util import as_polars
from jobs.quant.backtest import target_weights, turnover_by_date
from jobs.quant.features import LABEL
from jobs.quant.model import daily_ic
from jobs.quant.report import summarize


def fabric_home() -> str:
    """The FABRIC_HOME of this run (a node's artifact dir is <home>/runs/<submission>/<node>)."""
    return str(Path(context().artifact_root).parents[2])


def windows(feature_table: Any, seq_len: int) -> tuple[np.ndarray, pl.DataFrame]:
    """[n, seq_len, features] windows of the z-scored features per asset, and the (date, asset, label) of
    each window's last row: the same windows the bilstm trainer fits on."""
    df = as_polars(feature_table).drop_nulls(LABEL).sort("asset", "date")
    features = [c for c in df.columns if c.startswith("z_")]
    df = df.drop_nulls(features)
    xs, keys = [], []
    for part in df.partition_by("asset", maintain_order=True):
        if part.height < seq_len:
            continue
        matrix = part.select(features).to_numpy().astype(np.float32)
        xs.append(np.lib.stride_tricks.sliding_window_view(matrix, seq_len, axis=0).transpose(0, 2, 1))
        keys.append(part.select("date", "asset", LABEL).slice(seq_len - 1))
    return np.ascontiguousarray(np.concatenate(xs)), pl.concat(keys)


def backtest_bilstm(feature_table: Any, model_uri: str, seq_len: int = 10, val_frac: float = 0.2,
                    top_frac: float = 0.2, cost_bps: float = 5.0, probe_rows: int = 4) -> dict[str, Any]:
    """Outs `metrics` (sharpe, max_drawdown, ... over the validation period the model never saw) and `probe`
    (a few real input windows: the promote node's canary load, and a ready `curl` body as probe.json)."""
    from fabric.ml import load_model

    ctx = context()
    x, keys = windows(feature_table, seq_len)
    cutoff = np.quantile(np.unique(keys["date"].to_physical().to_numpy()), 1.0 - val_frac)
    oos = keys["date"].to_physical().to_numpy() >= cutoff
    model = load_model(model_uri, home=fabric_home())
    ctx.progress(0.3, f"scoring {int(oos.sum())} out-of-sample windows")
    scores = np.asarray(model.predict(x[oos])).reshape(-1)
    scored = keys.filter(pl.Series(oos)).with_columns(pl.Series("score", scores))
    book = target_weights(scored, top_frac)
    pnl = (book.group_by("date").agg((pl.col("weight") * pl.col(LABEL)).sum().alias("gross_ret"))
           .join(turnover_by_date(book), on="date").join(daily_ic(scored, "score"), on="date")
           .with_columns((pl.col("turnover") * cost_bps / 1e4).alias("cost"))
           .with_columns((pl.col("gross_ret") - pl.col("cost")).alias("net_ret")).sort("date"))
    metrics = summarize(pnl)
    probe = x[oos][:probe_rows].tolist()
    (ctx.artifact_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    (ctx.artifact_dir / "probe.json").write_text(json.dumps({"instances": probe}) + "\n")
    ctx.logger.info("bilstm backtest: sharpe %.2f, max drawdown %.2f%%, IC %.3f over %d days",
                    metrics["sharpe"], 100 * metrics["max_drawdown"], metrics["oos_ic"], metrics["days"])
    return {"metrics": metrics, "probe": probe}
