"""Node `model_card` of the BiLSTM example: what the model is for, what it was trained on, how it did, and
the hash of its stored files (which `promote` recomputes from the store: the reproducibility proof)."""

from __future__ import annotations

import json
from typing import Any

from fabric.context import context
from jobs.ml.backtest import fabric_home


def make_model_card(model_uri: str, metrics_json: str, metrics: dict[str, Any]) -> dict[str, Any]:
    from fabric.ml import artifact_hash

    training = json.loads(metrics_json) if isinstance(metrics_json, str) else dict(metrics_json)
    card = {
        "name": "xs_bilstm",
        "model_uri": model_uri,
        "intended_use": "research: next-day cross-sectional return ranks of synthetic assets; not for trading",
        "training_data": f"synthetic market panel, {training.get('n_train')} training windows, "
                         f"{training.get('n_val')} validation windows, features {training.get('features')}",
        "training": {"final": training.get("final"), "mlflow_run_id": training.get("mlflow_run_id")},
        "backtest": metrics,
        "artifact_hash": artifact_hash(model_uri, home=fabric_home()),
    }
    (context().artifact_dir / "model_card.json").write_text(json.dumps(card, indent=2, default=str) + "\n")
    return card
