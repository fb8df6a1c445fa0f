"""The BiLSTM regressor itself (torch): normalisation inside, so a loaded model takes raw feature windows."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class BiLSTM(nn.Module):
    """Windows [batch, seq_len, n_features] of raw features -> one prediction per window, in target units.

    Inputs are standardised with the training set's statistics and the output is scaled back, both by
    buffers saved with the weights: whoever loads the model (MLflow pyfunc, a serve replica) needs
    nothing but the model.
    """

    x_mean: torch.Tensor  # buffers (register_buffer), named here so they type as tensors
    x_std: torch.Tensor
    y_mean: torch.Tensor
    y_std: torch.Tensor

    def __init__(self, n_features: int, hidden: int = 16, layers: int = 1, dropout: float = 0.0,
                 x_mean: Any = None, x_std: Any = None, y_mean: float = 0.0, y_std: float = 1.0) -> None:
        super().__init__()
        self.lstm = nn.LSTM(n_features, hidden, num_layers=layers, batch_first=True, bidirectional=True,
                            dropout=dropout if layers > 1 else 0.0)
        self.head = nn.Linear(2 * hidden, 1)
        self.register_buffer("x_mean", torch.as_tensor(x_mean if x_mean is not None else [0.0] * n_features,
                                                       dtype=torch.float32))
        self.register_buffer("x_std", torch.as_tensor(x_std if x_std is not None else [1.0] * n_features,
                                                      dtype=torch.float32))
        self.register_buffer("y_mean", torch.tensor(float(y_mean)))
        self.register_buffer("y_std", torch.tensor(float(y_std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = (x.float() - self.x_mean) / self.x_std
        _, (h, _) = self.lstm(x)
        # The last layer's forward state (end of the window) and backward state (start of the window).
        both = torch.cat([h[-2], h[-1]], dim=-1)
        return self.head(both).squeeze(-1) * self.y_std + self.y_mean
