"""FLOPs of a module, counted from the real model with ``torch.utils.flop_counter``.

The counter charges one multiply-add as two FLOPs and counts matrix products and convolutions
only, as darknet's ``BFLOPs`` does. Build the model on the ``meta`` device to count without
computing: the counter only needs shapes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def forward_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """FLOPs of one forward pass over a zero input of ``input_shape`` (the whole batch)."""
    x = _zeros(model, input_shape)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops()


def train_flops(model: nn.Module, input_shape: Sequence[int]) -> int:
    """FLOPs of one training step's forward and backward over a batch of ``input_shape``.

    The loss is the sum of all outputs, which costs no counted FLOPs, so the count is the
    model's own forward plus the gradients of its inputs and weights. The optimizer update is
    elementwise and left out, as the counter leaves out every elementwise operation.
    """
    x = _zeros(model, input_shape)
    with FlopCounterMode(display=False) as counter:
        outputs = model(x)
        tensors = outputs if isinstance(outputs, (tuple, list)) else [outputs]
        torch.stack([t.sum() for t in tensors]).sum().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def _zeros(model: nn.Module, input_shape: Sequence[int]) -> torch.Tensor:
    device = next(model.parameters()).device
    return torch.zeros(tuple(input_shape), device=device)
