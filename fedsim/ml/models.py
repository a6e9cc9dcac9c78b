"""Small models that train for real in the simulator, and building any model by name.

A model is named by a built-in name (``fedsim.ml.spec.MODELS``) or by the import path of a
user's class or factory (``mypkg.models.MyNet``, a config's ``workload.model._target_``).
Either is called with ``num_classes`` and returns a ``torch.nn.Module``.

The digits models take scikit-learn's 8x8 grey digits, ``(batch, 1, 8, 8)``; ``in_channels``
(on the class or factory) tells ``fedsim.ml.spec`` and the data loaders what input a model
takes (models without it take RGB).
"""

from __future__ import annotations

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
    """A fresh instance of model ``name`` (a built-in name or an import path).

    Raises ``KeyError`` for an unknown built-in name and
    :class:`~fedsim.core.plugins.PluginError` for an import path that cannot be used, or whose
    callable returns no ``torch.nn.Module``.
    """
    from fedsim.ml.spec import new_model

    return new_model(name, num_classes)


def in_channels(name: str) -> int:
    """The input channels model ``name`` takes (1 for the digits nets, else 3: RGB), from its
    class or factory's ``in_channels``, without building it."""
    from fedsim.ml.spec import model_factory

    return int(getattr(model_factory(name), "in_channels", 3))
