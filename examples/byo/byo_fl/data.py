"""Striped images, split across the clients with a label skew: a data set and its partition.

Class ``k`` is a bar two pixels wide, horizontal for even ``k`` and vertical for odd ``k``,
at a position that depends on ``k // 2``; every pixel gets Gaussian noise. Client ``i`` holds
``samples_per_client * (1 + i % 3)`` images, mostly (``skew``) of classes ``i`` and ``i + 1``
(mod ``num_classes``), the rest of any class. The test set is balanced.

fedsim calls :func:`stripes` with the keywords it declares among ``num_clients``,
``num_classes``, ``input_size``, ``channels`` and ``seed``, plus the parameters the config
gives beside ``_target_``.
"""

from __future__ import annotations

import numpy as np

Arrays = tuple[np.ndarray, np.ndarray]


def stripes(
    *,
    num_clients: int,
    num_classes: int,
    input_size: int,
    channels: int,
    seed: int,
    samples_per_client: int = 60,
    test_samples: int = 200,
    skew: float = 0.8,
    noise: float = 0.3,
) -> tuple[list[Arrays], Arrays]:
    """One ``(X, y)`` per client and the test ``(X, y)``; ``X`` float32 ``(n, channels,
    input_size, input_size)``, ``y`` int64."""
    if num_classes > input_size:
        raise ValueError(f"{num_classes} classes need images of at least {num_classes} pixels")
    if not 0 <= skew <= 1:
        raise ValueError(f"skew must be in [0, 1], got {skew}")
    rng = np.random.default_rng(seed)
    shards = []
    for i in range(num_clients):
        n = samples_per_client * (1 + i % 3)
        favoured = [i % num_classes, (i + 1) % num_classes]
        picks = rng.random(n) < skew
        labels = np.where(picks, rng.choice(favoured, size=n), rng.integers(0, num_classes, size=n))
        shards.append((_images(labels, num_classes, input_size, channels, noise, rng), labels))
    test_labels = np.arange(test_samples) % num_classes
    test = _images(test_labels, num_classes, input_size, channels, noise, rng)
    return shards, (test, test_labels)


def _images(
    labels: np.ndarray,
    num_classes: int,
    size: int,
    channels: int,
    noise: float,
    rng: np.random.Generator,
) -> np.ndarray:
    X = rng.normal(0.0, noise, size=(len(labels), channels, size, size)).astype(np.float32)
    positions = -(-num_classes // 2)  # bars of each orientation
    for i, label in enumerate(labels):
        start = (int(label) // 2) * size // positions
        if label % 2 == 0:
            X[i, :, start : start + 2, :] += 1.0
        else:
            X[i, :, :, start : start + 2] += 1.0
    return X
