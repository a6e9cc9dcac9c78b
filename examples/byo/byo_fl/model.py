"""TinyNet: one 3x3 convolution, a 2x2 average pool and a linear layer, for grey images.

fedsim calls a model's class or factory with ``num_classes`` and measures it at the
workload's ``input_size``; ``in_channels`` says which input it takes (1: grey).
"""

from __future__ import annotations

import torch
from torch import nn


class TinyNet(nn.Module):
    """8 convolution filters, pooled to 2x2, then a linear layer: 80 + 33 x num_classes
    parameters, whatever the image's side."""

    in_channels = 1

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(self.in_channels, 8, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
        )
        self.head = nn.Linear(8 * 2 * 2, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
