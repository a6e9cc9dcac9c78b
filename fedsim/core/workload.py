"""What one training job is: the model's measured size and cost, the data set, the local work."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

FLOAT32_BYTES = 4


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """Size and cost of a model, measured from the real module (never typed in).

    ``state_values`` counts every float the model ships: parameters plus buffers that a trained
    model carries (BatchNorm running mean and variance), the quantity darknet's weight files hold.
    FLOPs are per sample at ``input_size``; one multiply-add counts as two FLOPs.
    """

    name: str
    input_size: int
    num_classes: int
    parameters: int
    buffers: int
    forward_flops: int
    train_flops: int

    @property
    def state_values(self) -> int:
        return self.parameters + self.buffers

    @property
    def state_bytes(self) -> int:
        """Bytes of the float32 state on the wire (payload, without container headers)."""
        return self.state_values * FLOAT32_BYTES


@dataclass(frozen=True, kw_only=True)
class DatasetSpec:
    """A training set as far as timing needs it (how many samples and how many bytes), and
    where real training finds it: ``path``, for a data set read from disk (an image folder, an
    ``.npz`` file), or ``factory``, the import path of a user's function that returns each
    client's shard and the test set, called with ``factory_params`` (``docs/plugins.md``)."""

    name: str
    samples: int
    total_bytes: int
    path: str | None = None
    factory: str | None = None
    factory_params: Mapping[str, Any] = field(default_factory=dict)

    @property
    def bytes_per_sample(self) -> float:
        return self.total_bytes / self.samples


@dataclass(frozen=True, kw_only=True)
class WorkloadSpec:
    """One training job: a model trained on local shards of a data set.

    ``samples_per_device`` is each participating device's local shard; in the cloud-based
    scenario these shards travel to the server, which trains on all of them.
    """

    model: ModelSpec
    dataset: DatasetSpec
    samples_per_device: int
    batch_size: int
    epochs: int

    def train_flops(self, samples: int) -> float:
        """FLOPs to train ``samples`` samples for ``epochs`` epochs."""
        return float(self.model.train_flops) * samples * self.epochs

    def shard_bytes(self, samples: int | None = None) -> int:
        """Bytes of a local shard of ``samples`` samples (default: one device's shard)."""
        n = self.samples_per_device if samples is None else samples
        return round(n * self.dataset.bytes_per_sample)
