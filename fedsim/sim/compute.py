"""How long compute takes on a simulated device.

A step costs max(arithmetic, memory traffic) - the roofline's two ceilings - plus disk writes:
seconds = max(FLOPs / (peak x efficiency), bytes / memory bandwidth) + disk bytes / disk
bandwidth, scaled by a seeded jitter factor. Training a model for which the device's measured
profile has a step model takes, per epoch, batches x overhead + samples x per-sample cost in
place of the FLOPs term (``fedsim.core.calibration``). A measured profile's serialization and
load throughputs time the update a device serializes and the model it loads.
"""

from __future__ import annotations

import math

import numpy as np

from fedsim.core.runtime import Cost
from fedsim.core.topology import HardwareProfile


def compute_seconds(cost: Cost, hw: HardwareProfile) -> float:
    """The modelled time of ``cost`` on ``hw``, without jitter."""
    step = hw.steps.get(cost.model) if cost.model else None
    if step is not None and cost.samples > 0:
        arithmetic = cost.epochs * step.epoch_seconds(cost.samples, cost.batch_size)
    else:
        arithmetic = cost.flops / hw.effective_flops
    memory = cost.memory_bytes / hw.memory_bandwidth
    return max(arithmetic, memory) + cost.disk_bytes / hw.disk_bandwidth


def load_seconds(nbytes: int, hw: HardwareProfile) -> float:
    """Loading (deserializing) ``nbytes`` of a model on ``hw``: 0 without a measured rate."""
    return nbytes / hw.load_bytes_per_s if hw.load_bytes_per_s else 0.0


def serialize_seconds(nbytes: int, hw: HardwareProfile) -> float:
    """Serializing ``nbytes`` of an update on ``hw``: 0 without a measured rate."""
    return nbytes / hw.serialize_bytes_per_s if hw.serialize_bytes_per_s else 0.0


def jitter_factor(rng: np.random.Generator, cv: float) -> float:
    """A log-normal factor with mean 1 and coefficient of variation ``cv`` (1.0 when cv is 0).

    Log-normal because run times are positive and skewed to the right: a step can take much
    longer than usual (contention, thermal throttling) but never less than nothing.
    """
    if cv <= 0:
        return 1.0
    sigma2 = math.log1p(cv * cv)
    return float(rng.lognormal(mean=-sigma2 / 2, sigma=math.sqrt(sigma2)))
