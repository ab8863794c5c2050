"""Multi-layer perceptron for tabular rows (credit default, breast cancer, claims)."""

from __future__ import annotations

import torch
from torch import nn


class TabularMLP(nn.Module):
    """Feed-forward classifier over a standardised feature vector.

    Parameters
    ----------
    in_features
        Number of input columns.
    num_classes
        Number of output logits.
    hidden
        Width of each hidden layer, in order.
    dropout
        Dropout after each hidden activation; small sites overfit quickly.
    input_norm
        Standardise inputs with a non-affine BatchNorm whose running statistics are
        exchanged and averaged like weights: weighted by example counts, the average of
        the sites' means is the federation's mean, so every site ends up scaling its
        features the same way without ever sharing a statistic in the clear.
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int = 2,
        hidden: tuple[int, ...] = (64, 32),
        dropout: float = 0.1,
        input_norm: bool = True,
    ) -> None:
        super().__init__()
        if in_features < 1:
            raise ValueError(f"in_features must be >= 1, got {in_features}")
        layers: list[nn.Module] = []
        if input_norm:
            layers.append(nn.BatchNorm1d(in_features, affine=False, momentum=None))
        width = in_features
        for size in hidden:
            layers += [nn.Linear(width, size), nn.ReLU(), nn.Dropout(dropout)]
            width = size
        self.body = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return logits ``[B, num_classes]`` for features ``x`` of shape ``[B, F]``."""
        return self.classifier(self.body(x))
