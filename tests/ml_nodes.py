"""Node functions the ML tests run as python_task entrypoints: a small synthetic feature table."""

from __future__ import annotations

import pyarrow as pa

from jobs.quant.data import simulate_market
from jobs.quant.features import build_features


def feature_table(n_assets: int = 20, n_days: int = 200, seed: int = 3) -> pa.Table:
    """The quant example's features (z-scored, with the fwd_ret_1d label) on a small seeded market."""
    return build_features(simulate_market(n_assets=n_assets, n_days=n_days, seed=seed))
