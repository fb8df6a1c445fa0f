"""Summary statistics of a daily PnL series; writes metrics.json into the node's artifact dir."""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np

from fabric.context import context
from jobs.quant._util import as_polars

TRADING_DAYS = 252.0


def _finite(x: float) -> float:
    return float(x) if math.isfinite(x) else 0.0


def summarize(pnl: Any) -> dict[str, float | int]:
    """Annualised return/vol, Sharpe, max drawdown, hit rate, turnover and IC of a PnL table."""
    df = as_polars(pnl).sort("date")
    r = df["net_ret"].to_numpy().astype(np.float64)
    if r.size == 0:
        raise ValueError("empty PnL table")
    equity = np.cumprod(1.0 + r)
    peak = np.maximum.accumulate(np.concatenate([[1.0], equity]))[1:]
    vol = float(r.std(ddof=1)) if r.size > 1 else 0.0
    ic = df["ic"].drop_nulls()
    return {
        "days": int(r.size),
        "ann_return": _finite(r.mean() * TRADING_DAYS),
        "ann_vol": _finite(vol * math.sqrt(TRADING_DAYS)),
        "sharpe": _finite(r.mean() / vol * math.sqrt(TRADING_DAYS)) if vol > 0 else 0.0,
        "total_return": _finite(equity[-1] - 1.0),
        "max_drawdown": _finite(float(np.min(equity / peak - 1.0))),
        "hit_rate": float(np.mean(r > 0)),
        "avg_turnover": _finite(float(df["turnover"].mean())),
        "ann_cost": _finite(float(df["cost"].mean()) * TRADING_DAYS),
        "gross_sharpe": _gross_sharpe(df["gross_ret"].to_numpy().astype(np.float64)),
        "oos_ic": _finite(float(ic.mean())) if ic.len() else 0.0,
    }


def _gross_sharpe(g: np.ndarray) -> float:
    vol = float(g.std(ddof=1)) if g.size > 1 else 0.0
    return _finite(g.mean() / vol * math.sqrt(TRADING_DAYS)) if vol > 0 else 0.0


def make_report(pnl: Any, fit_metrics: dict[str, Any]) -> dict[str, Any]:
    """Node `report`: the backtest's metrics plus the fit's in-sample metrics; also written as JSON."""
    ctx = context()
    metrics: dict[str, Any] = summarize(pnl)
    metrics.update({k: v for k, v in fit_metrics.items() if k.startswith("in_sample_") or k == "split_date"})
    path = ctx.artifact_dir / "metrics.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
    ctx.logger.info("sharpe %.2f, ann return %.2f%%, max drawdown %.2f%% over %d days -> %s",
                    metrics["sharpe"], 100 * metrics["ann_return"], 100 * metrics["max_drawdown"],
                    metrics["days"], path)
    ctx.progress(1.0, f"sharpe {metrics['sharpe']:.2f}")
    return metrics
