"""Seeded synthetic daily market data with a planted cross-sectional signal, written as Parquet."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fabric.context import context

START_DATE = "2019-01-02"


def business_days(n: int, start: str = START_DATE, end: str | None = None) -> np.ndarray:
    """The first `n` weekdays from `start` as datetime64[D]; with `end`, the last `n` weekdays up to it."""
    if end is not None:
        last = np.datetime64(end, "D")
        days = np.arange(last - (n * 7 // 5 + 14), last + 1)
        return days[np.is_busday(days)][-n:]
    first = np.datetime64(start, "D")
    days = np.arange(first, first + n * 7 // 5 + 14)
    return days[np.is_busday(days)][:n]


def _ar1(rng: np.random.Generator, n_days: int, n_assets: int, phi: float) -> np.ndarray:
    """Unit-variance AR(1) paths, one column per asset."""
    shocks = rng.standard_normal((n_days, n_assets)) * np.sqrt(1.0 - phi * phi)
    out = np.empty((n_days, n_assets))
    out[0] = rng.standard_normal(n_assets)
    for t in range(1, n_days):
        out[t] = phi * out[t - 1] + shocks[t]
    return out


def _zscore_rows(x: np.ndarray) -> np.ndarray:
    return (x - x.mean(axis=1, keepdims=True)) / x.std(axis=1, keepdims=True)


def simulate_market(n_assets: int = 50, n_days: int = 750, seed: int = 7,
                    signal_strength: float = 0.001, as_of: str | None = None) -> pa.Table:
    """The synthetic panel as a pyarrow Table sorted by (date, asset).

    Next-day returns are `beta * market + signal_strength * xs_zscore(earnings_yield today) + idio noise`
    (fat-tailed, 1.2%-2.5% daily vol), so the lagged earnings yield carries a small, genuine
    cross-sectional signal; `book_to_price` is correlated with it but has no predictive power of its own.
    """
    if n_assets < 5 or n_days < 100:
        raise ValueError("need at least 5 assets and 100 days")
    rng = np.random.default_rng(seed)
    dates = business_days(n_days, end=as_of)  # as_of: the panel's last day (the pipeline's `as_of` param)

    beta = rng.uniform(0.6, 1.4, n_assets)
    idio_vol = rng.uniform(0.012, 0.025, n_assets)
    t_dof = 5.0
    t_scale = np.sqrt((t_dof - 2.0) / t_dof)
    market = 0.0003 + 0.009 * rng.standard_t(t_dof, n_days) * t_scale

    ey_level = rng.normal(0.06, 0.015, n_assets)
    ey_path = _ar1(rng, n_days, n_assets, phi=0.99)
    earnings_yield = ey_level + 0.02 * ey_path
    bp_own = _ar1(rng, n_days, n_assets, phi=0.995)
    book_to_price = np.clip(0.8 + 0.25 * (0.6 * ey_path + 0.8 * bp_own), 0.05, None)

    signal = _zscore_rows(earnings_yield)
    idio = rng.standard_t(t_dof, (n_days, n_assets)) * t_scale * idio_vol
    returns = np.zeros((n_days, n_assets))
    returns[1:] = beta * market[1:, None] + signal_strength * signal[:-1] + idio[1:]
    returns = np.clip(returns, -0.5, 0.5)
    close = rng.uniform(20.0, 200.0, n_assets) * np.cumprod(1.0 + returns, axis=0)

    base_volume = np.exp(rng.uniform(np.log(2e5), np.log(5e6), n_assets))
    log_volume = np.log(base_volume) + 0.35 * _ar1(rng, n_days, n_assets, phi=0.8) + 12.0 * np.abs(returns)
    volume = np.round(np.exp(log_volume)).astype(np.int64)

    assets = np.array([f"SYN{i:03d}" for i in range(n_assets)])
    return pa.table({
        "date": pa.array(np.repeat(dates, n_assets), type=pa.date32()),
        "asset": pa.array(np.tile(assets, n_days), type=pa.string()),
        "close": pa.array(close.ravel(), type=pa.float64()),
        "volume": pa.array(volume.ravel(), type=pa.int64()),
        "earnings_yield": pa.array(earnings_yield.ravel(), type=pa.float64()),
        "book_to_price": pa.array(book_to_price.ravel(), type=pa.float64()),
    })


def generate_market_data(n_assets: int = 50, n_days: int = 750, seed: int = 7,
                         signal_strength: float = 0.001, as_of: str | None = None) -> pa.Table:
    """Node `make_data`: simulate the panel and return it as a table.

    The table is the output that the next node reads (through Ray's object store, so it reaches any
    worker); `prices.parquet` in the artifact dir is a node file for people to download, which fabric
    moves to the durable record. A local path would not be readable on another worker.
    """
    ctx = context()
    ctx.progress(0.05, f"simulating {n_assets} assets x {n_days} days to {as_of or 'the default end'} (seed {seed})")
    table = simulate_market(n_assets=n_assets, n_days=n_days, seed=seed, signal_strength=signal_strength,
                            as_of=as_of)
    ctx.progress(0.8, "writing parquet")
    path = ctx.artifact_dir / "prices.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)
    ctx.logger.info("wrote %d rows (%d assets, %d days, seed %d) to %s",
                    table.num_rows, n_assets, n_days, seed, path)
    ctx.progress(1.0, f"wrote {table.num_rows} rows")
    return table
