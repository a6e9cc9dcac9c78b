"""A model's shipped state as named numpy arrays (``NDArrays``), and back.

What ships is the ``state_dict``'s floating-point entries: parameters plus the buffers a trained
model carries (BatchNorm's running mean and variance), as ``fedsim.ml.spec`` counts them.
Integer buffers (BatchNorm's ``num_batches_tracked``) are local bookkeeping and stay behind.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from fedsim.core.runtime import NDArrays


def get_parameters(model: nn.Module) -> NDArrays:
    """Float32 numpy copies of the model's floating-point state, keyed by ``state_dict`` name."""
    return {
        name: tensor.detach().to("cpu", torch.float32).numpy().copy()
        for name, tensor in model.state_dict().items()
        if tensor.is_floating_point()
    }


def set_parameters(model: nn.Module, arrays: NDArrays) -> None:
    """Copy ``arrays`` into the model; names and shapes must match ``get_parameters`` exactly."""
    state = {k: v for k, v in model.state_dict().items() if v.is_floating_point()}
    if arrays.keys() != state.keys():
        missing = sorted(state.keys() - arrays.keys())
        unexpected = sorted(arrays.keys() - state.keys())
        raise ValueError(
            f"parameter names do not match the model: missing {missing}, unexpected {unexpected}"
        )
    wrong = [
        f"{name}: {np.shape(arrays[name])} != {tuple(tensor.shape)}"
        for name, tensor in state.items()
        if np.shape(arrays[name]) != tuple(tensor.shape)
    ]
    if wrong:
        raise ValueError(f"parameter shapes do not match the model: {'; '.join(wrong)}")
    with torch.no_grad():
        # state_dict tensors share storage with the module, so copying into them loads the model.
        for name, tensor in state.items():
            tensor.copy_(torch.as_tensor(arrays[name]))
