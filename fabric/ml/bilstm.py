"""Trainer `bilstm`: sliding windows per series of a feature table -> a small bidirectional LSTM regressor."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fabric.ml.base import Prepared

DEFAULT_TARGET = "fwd_ret_1d"  # the label of jobs/quant/features.py


class BiLstmTrainer:
    """Reads one table (Arrow, Polars, pandas, or a Parquet path) with a series key, a time column, feature
    columns and a target. A sample is the `seq_len` rows of one series ending at t; its label is the
    target at t. The last `val_frac` of the time axis is the validation set (no shuffling across time).
    Features default to the `z_*` columns when there are any, else every numeric column but the target.
    """

    name = "bilstm"
    defaults: Mapping[str, Any] = {
        "features": None, "target": DEFAULT_TARGET, "group_by": "asset", "order_by": "date",
        "seq_len": 10, "hidden": 16, "layers": 1, "dropout": 0.0, "val_frac": 0.2, "max_samples": None,
    }

    def check(self, params: Mapping[str, Any]) -> list[str]:
        problems = []
        for key in ("seq_len", "hidden", "layers"):
            value = params.get(key, self.defaults[key])
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                problems.append(f"{key} must be a positive integer, not {value!r}")
        val_frac = params.get("val_frac", 0.2)
        if not isinstance(val_frac, int | float) or not 0 < val_frac < 1:
            problems.append(f"val_frac must be a number between 0 and 1, not {val_frac!r}")
        dropout = params.get("dropout", 0.0)
        if not isinstance(dropout, int | float) or not 0 <= dropout < 1:
            problems.append(f"dropout must be in [0, 1), not {dropout!r}")
        features = params.get("features")
        if features is not None and (not isinstance(features, list) or not features
                                     or not all(isinstance(f, str) for f in features)):
            problems.append("features must be a non-empty list of column names")
        for key in ("target", "group_by", "order_by"):
            value = params.get(key, self.defaults[key])
            if not (isinstance(value, str) and value) and not (key == "group_by" and value is None):
                problems.append(f"{key} must be a column name, not {value!r}")
        return problems

    def prepare(self, inputs: Mapping[str, Any], params: Mapping[str, Any]) -> Prepared:
        import numpy as np

        if len(inputs) != 1:
            raise ValueError(f"bilstm trains on exactly one input table, got {sorted(inputs)}")
        (value,) = inputs.values()
        frame = _as_polars(value)
        target, order, group = params["target"], params["order_by"], params["group_by"]
        features = list(params["features"] or _default_features(frame, {target, order, group}))
        missing = [c for c in [target, order, *features, *([group] if group else [])] if c not in frame.columns]
        if missing:
            raise ValueError(f"columns {missing} are not in the input table (it has {frame.columns})")
        frame = frame.drop_nulls([target, *features]).sort([group, order] if group else [order])
        seq_len = int(params["seq_len"])
        xs, ys, ts = [], [], []
        parts = frame.partition_by(group, maintain_order=True) if group else [frame]
        for part in parts:
            if part.height < seq_len:
                continue
            matrix = part.select(features).to_numpy().astype(np.float32)
            windows = np.lib.stride_tricks.sliding_window_view(matrix, seq_len, axis=0)  # [n, F, seq]
            xs.append(np.ascontiguousarray(windows.transpose(0, 2, 1)))
            ys.append(part[target].to_numpy().astype(np.float32)[seq_len - 1:])
            ts.append(part[order].to_physical().to_numpy()[seq_len - 1:])
        if not xs:
            raise ValueError(f"no series has {seq_len} rows: lower seq_len or give more data")
        x, y, t = np.concatenate(xs), np.concatenate(ys), np.concatenate(ts)
        keep = np.isfinite(y) & np.isfinite(x).all(axis=(1, 2))
        x, y, t = x[keep], y[keep], t[keep]
        cutoff = np.quantile(np.unique(t), 1.0 - float(params["val_frac"]))
        train, val = t < cutoff, t >= cutoff
        limit = params.get("max_samples")
        train_idx = np.flatnonzero(train)
        if limit:  # the most recent samples: older ones are least like the validation period
            train_idx = train_idx[np.argsort(t[train_idx], kind="stable")][-int(limit):]
        x_train, y_train = x[train_idx], y[train_idx]
        if len(x_train) == 0 or not val.any():
            raise ValueError("the time split left the training or validation set empty; change val_frac")
        x_mean = x_train.reshape(-1, x.shape[2]).mean(axis=0)
        x_std = x_train.reshape(-1, x.shape[2]).std(axis=0) + 1e-6
        meta = {"n_features": len(features), "features": features, "seq_len": seq_len,
                "x_mean": x_mean.tolist(), "x_std": x_std.tolist(),
                "y_mean": float(y_train.mean()), "y_std": float(y_train.std() + 1e-12),
                "n_train": int(len(x_train)), "n_val": int(val.sum())}
        return Prepared(x_train, y_train, x[val], y[val], meta)

    def model(self, params: Mapping[str, Any], meta: Mapping[str, Any]) -> Any:
        from fabric.ml.bilstm_model import BiLSTM

        return BiLSTM(meta["n_features"], hidden=int(params["hidden"]), layers=int(params["layers"]),
                      dropout=float(params["dropout"]), x_mean=meta["x_mean"], x_std=meta["x_std"],
                      y_mean=meta["y_mean"], y_std=meta["y_std"])


def _default_features(frame: Any, exclude: set[str]) -> list[str]:
    zs = [c for c in frame.columns if c.startswith("z_")]
    if zs:
        return zs
    return [c for c, dtype in frame.schema.items() if c not in exclude and dtype.is_numeric()]


def _as_polars(value: Any) -> Any:
    import polars as pl

    from fabric.tables import as_lazy_frame

    if type(value).__module__.startswith("pandas"):
        return pl.from_pandas(value)
    return as_lazy_frame(value, "input").collect()
