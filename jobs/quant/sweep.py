"""The parameter sweep's nodes (jobs/dags/param_sweep.yaml): a grid of lookbacks x costs, one momentum backtest per
grid point (a map), and the pick of the best Sharpe."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from jobs.quant._util import as_polars, maybe_context
from jobs.quant.backtest import target_weights, turnover_by_date
from jobs.quant.report import TRADING_DAYS


def make_grid(lookbacks: list[int], costs: list[float], fail_once: list[int] | None = None,
              fail_while_broken: list[int] | None = None, marker_dir: str = "") -> list[dict[str, Any]]:
    """Node `grid`: every (lookback, cost) pair, in order. `fail_once` and `fail_while_broken` mark points that
    fail on purpose (the tests': once, or while `<marker_dir>/broken` exists)."""
    once, broken = set(fail_once or ()), set(fail_while_broken or ())
    points = []
    for lookback in lookbacks:
        for cost in costs:
            index = len(points)
            fail = "once" if index in once else "while_broken" if index in broken else ""
            points.append({"index": index, "lookback": int(lookback), "cost_bps": float(cost), "fail": fail,
                           "marker_dir": marker_dir})
    return points


def _injected(point: dict[str, Any]) -> None:
    marker_dir = Path(point.get("marker_dir") or ".")
    if point.get("fail") == "once":
        marker = marker_dir / f"failed-once-{point['index']}"
        if not marker.exists():
            marker.parent.mkdir(parents=True, exist_ok=True)
            marker.touch()
            raise RuntimeError(f"point {point['index']}: injected failure (fails once)")
    if point.get("fail") == "while_broken" and (marker_dir / "broken").exists():
        raise RuntimeError(f"point {point['index']}: injected failure (while {marker_dir / 'broken'} exists)")


def backtest_point(point: dict[str, Any], prices: Any, top_frac: float = 0.2) -> dict[str, Any]:
    """Map node `backtest`, once per grid point: a cross-sectional momentum book (long the top `top_frac` of the
    past `lookback`-day return, short the bottom), rebalanced daily, costs in bps of turnover; its net Sharpe."""
    _injected(point)
    lookback, cost = int(point["lookback"]), float(point["cost_bps"])
    df = as_polars(prices).select("date", "asset", "close").sort("asset", "date")
    df = df.with_columns(
        (pl.col("close") / pl.col("close").shift(lookback).over("asset") - 1.0).alias("score"),
        (pl.col("close").shift(-1).over("asset") / pl.col("close") - 1.0).alias("fwd"),
    ).drop_nulls()
    book = target_weights(df.select("date", "asset", "score", "fwd"), top_frac)
    daily = (book.group_by("date").agg((pl.col("weight") * pl.col("fwd")).sum().alias("gross"))
             .join(turnover_by_date(book), on="date").sort("date")
             .with_columns((pl.col("gross") - pl.col("turnover") * cost / 1e4).alias("net")))
    net = daily["net"].to_numpy().astype(np.float64)
    vol = float(net.std(ddof=1)) if net.size > 1 else 0.0
    sharpe = float(net.mean() / vol * math.sqrt(TRADING_DAYS)) if vol > 0 else 0.0
    return {"index": point["index"], "lookback": lookback, "cost_bps": cost, "sharpe": round(sharpe, 6),
            "days": int(net.size)}


def pick_best(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Node `pick`: the grid point with the best Sharpe among the backtests that succeeded."""
    if not results:
        raise ValueError("no backtest succeeded")
    best = max(results, key=lambda r: (r["sharpe"], -r["index"]))
    missing = list(getattr(results, "missing", ()))  # fabric.MapResults: items whose backtest failed
    return {"best": best, "best_sharpe": best["sharpe"], "n_points": len(results), "missing": missing}


def sweep_report(best: dict[str, Any], points: int) -> dict[str, Any]:
    """Node `report` (only when the best Sharpe is positive): the winner, written to metrics.json."""
    metrics = {"best_lookback": best["lookback"], "best_cost_bps": best["cost_bps"], "best_sharpe": best["sharpe"],
               "points": points}
    ctx = maybe_context()
    if ctx is not None:
        path = ctx.artifact_dir / "metrics.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        ctx.logger.info("best of %d points: lookback %d, cost %g bps, sharpe %.2f", points, best["lookback"],
                        best["cost_bps"], best["sharpe"])
    return metrics
