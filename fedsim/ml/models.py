"""Small models that train for real in the simulator, and building any registered model by name.

The digits models take scikit-learn's 8x8 grey digits, ``(batch, 1, 8, 8)``; ``in_channels``
tells ``fedsim.ml.spec`` what input to measure them with (models without it take RGB). Both
accept ``num_classes`` as every model in the registry does.
"""

from __future__ import annotations

import importlib

import torch
from torch import nn


class DigitsCNN(nn.Module):
    """Two 3x3 convolutions, a 2x2 max-pool and two linear layers (~38k parameters).

    The pool is adaptive to 4x4, which on 8x8 input is exactly a 2x2 max-pool, so that the spec
    machinery can also measure the net at other input sizes.
    """

    in_channels = 1

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.features = nn.Sequential(
            nn.Conv2d(self.in_channels, 16, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.AdaptiveMaxPool2d(4),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32 * 4 * 4, 64),
            nn.ReLU(inplace=True),
            nn.Linear(64, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class DigitsMLP(nn.Module):
    """One hidden layer of 64 units over the 64 flattened pixels (8x8 input only)."""

    in_channels = 1

    def __init__(self, num_classes: int = 10, hidden: int = 64) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.layers = nn.Sequential(
            nn.Flatten(),
            nn.Linear(self.in_channels * 8 * 8, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


def build_model(name: str, num_classes: int) -> nn.Module:
    """A fresh instance of the model registered as ``name`` in ``fedsim.ml.spec.MODELS``."""
    return _model_class(name)(num_classes=num_classes)


def in_channels(name: str) -> int:
    """The input channels the model registered as ``name`` takes (1 for the digits nets, else
    3: RGB), without building it."""
    return int(getattr(_model_class(name), "in_channels", 3))


def _model_class(name: str) -> type[nn.Module]:
    from fedsim.ml.spec import MODELS

    if name not in MODELS:
        raise KeyError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
    module_name, class_name = MODELS[name].split(":")
    model_class: type[nn.Module] = getattr(importlib.import_module(module_name), class_name)
    return model_class
