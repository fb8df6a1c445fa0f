"""ML on the fabric: the trainer registry, MLflow tracking, and loading a trained model for prediction.

Importing this package imports neither torch, Ray nor MLflow; they load when used.
"""

from __future__ import annotations

from fabric.ml.base import Prepared, Trainer
from fabric.ml.tracking import artifact_hash, load_model, tracking_uri
from fabric.ml.trainers import available_trainers, get_trainer, register_trainer

__all__ = ["Prepared", "Trainer", "artifact_hash", "available_trainers", "get_trainer", "load_model",
           "register_trainer", "tracking_uri"]
