"""Splitting a labelled data set among clients: IID, or label-skewed by a Dirichlet draw.

``dirichlet_partition`` is the label-wise split of Hsu et al. 2019 ("Measuring the effects of
non-identical data distribution"), in the per-class form that NIID-Bench and most FL papers use:
for every class, a share per client is drawn from ``Dir(alpha)`` and the class's samples are cut
in those proportions. Small ``alpha`` gives each client a few dominant classes; large ``alpha``
approaches an IID split. Index arrays come back sorted, so a client's shard reads in data-set
order and a report can compare splits by eye.
"""

from __future__ import annotations

import numpy as np

DEFAULT_MAX_TRIES = 1000


def iid_partition(n: int, n_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """``n`` indices shuffled and cut into ``n_clients`` shards whose sizes differ by <= 1."""
    _check_counts(n, n_clients, min_size=1)
    return [np.sort(part) for part in np.array_split(rng.permutation(n), n_clients)]


def dirichlet_partition(
    labels: np.ndarray,
    n_clients: int,
    alpha: float,
    *,
    rng: np.random.Generator,
    min_size: int = 1,
    max_tries: int = DEFAULT_MAX_TRIES,
) -> list[np.ndarray]:
    """Sample indices per client, each class split among clients by a ``Dir(alpha)`` draw.

    The whole split is drawn again until every client holds at least ``min_size`` samples; after
    ``max_tries`` draws it gives up with a ``ValueError`` that says what to relax. A request no
    draw can meet (fewer samples than ``n_clients * min_size``) fails at once.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {labels.shape}")
    if alpha <= 0:
        raise ValueError(f"alpha must be > 0, got {alpha}")
    if max_tries < 1:
        raise ValueError(f"max_tries must be >= 1, got {max_tries}")
    _check_counts(len(labels), n_clients, min_size)

    by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
    for _ in range(max_tries):
        parts: list[list[np.ndarray]] = [[] for _ in range(n_clients)]
        for indices in by_class:
            shares = rng.dirichlet(np.full(n_clients, alpha))
            cuts = (np.cumsum(shares)[:-1] * len(indices)).astype(np.int64)
            for client, chunk in enumerate(np.split(rng.permutation(indices), cuts)):
                parts[client].append(chunk)
        result = [np.sort(np.concatenate(chunks)) for chunks in parts]
        if min(len(part) for part in result) >= min_size:
            return result
    raise ValueError(
        f"no Dirichlet split with alpha={alpha} gave all {n_clients} clients >= {min_size} "
        f"samples in {max_tries} tries ({len(labels)} samples); raise alpha, lower min_size "
        "or use fewer clients"
    )


def label_distribution(labels: np.ndarray, parts: list[np.ndarray]) -> np.ndarray:
    """Sample counts per client (rows) and class (columns, in ``np.unique(labels)`` order)."""
    labels = np.asarray(labels)
    classes, codes = np.unique(labels, return_inverse=True)
    counts = np.zeros((len(parts), len(classes)), dtype=np.int64)
    for client, part in enumerate(parts):
        counts[client] = np.bincount(codes[part], minlength=len(classes))
    return counts


def _check_counts(n: int, n_clients: int, min_size: int) -> None:
    if n_clients < 1:
        raise ValueError(f"n_clients must be >= 1, got {n_clients}")
    if min_size < 0:
        raise ValueError(f"min_size must be >= 0, got {min_size}")
    if n < n_clients * min_size:
        raise ValueError(
            f"cannot give {n_clients} clients {min_size} samples each from {n} samples"
        )
