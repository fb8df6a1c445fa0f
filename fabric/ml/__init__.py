"""ML on the fabric: the trainer registry, MLflow tracking, and loading a trained model for prediction.

Importing this package imports neither torch, Ray nor MLflow; they load when used.
"""

from __future__ import annotations

from fabric.ml.tracking import load_model, tracking_uri
from fabric.ml.trainers import Prepared, Trainer, available_trainers, get_trainer, register_trainer

__all__ = ["Prepared", "Trainer", "available_trainers", "get_trainer", "load_model", "register_trainer",
           "tracking_uri"]
