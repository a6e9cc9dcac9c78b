"""Local training and evaluation for real, for the simulator to run while SimPy keeps the time.

``TorchTrainer`` is a ``LocalTrainer``: called with a device id and its ``FitIns``, it loads the
global parameters, trains on that device's data and returns the new parameters with metrics.
A call is a pure function of (trainer seed, device id, model version, parameters, instruction):
the shuffling and any other randomness are seeded from the first three and the global RNG is
left as it was, so a simulation gives the same models whatever order its events run in.

``ins.config`` keys read: ``learning_rate`` (SGD, default 0.05), ``momentum`` (default 0.9) and
``proximal_mu`` (FedProx; off when absent or 0), and ``dp_clip_norm`` with
``dp_noise_multiplier`` (local differential privacy, :mod:`fedsim.core.privacy`).

Threads: the trainer leaves torch's process-wide thread count alone. The digits models are too
small for intra-op parallelism to matter (one thread trains them about as fast as two), so a
caller that wants the other cores for other work calls ``torch.set_num_threads(1)`` first.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from fedsim.core.privacy import local_dp_settings, privatize
from fedsim.core.runtime import FitIns, NDArrays
from fedsim.ml.models import build_model
from fedsim.ml.params import get_parameters, set_parameters

DEFAULT_LEARNING_RATE = 0.05
DEFAULT_MOMENTUM = 0.9
EVAL_BATCH_SIZE = 1024
LOCAL_DP_STREAM = 0x4450  # a second key beside the call's seed, for local DP's noise

Shard = tuple[Any, Any]  # (X, y): numpy arrays or tensors, X float and y integer class indices
LocalData = Mapping[int, Shard] | Callable[[int], Shard]


class TorchTrainer:
    """Trains model ``model_name`` on each device's own data (a ``LocalTrainer``).

    ``data`` maps a device id to its ``(X, y)``, or is a function that returns them; each
    device's shard is converted to tensors once and kept. One model instance serves every device,
    since each call overwrites its whole state. ``ins.samples`` is the number of samples an
    epoch processes: the trainer draws them from a stream of fresh permutations of the shard, so
    a request for more samples than the device holds cycles through its data and a request for
    fewer takes a partial pass, the next epoch continuing where it stopped.

    A ``FitIns`` without parameters starts from ``initial_parameters()``, the model as
    initialised under ``seed``.
    """

    def __init__(
        self,
        *,
        model_name: str,
        num_classes: int,
        data: LocalData,
        seed: int,
        device: str | torch.device = "cpu",
    ) -> None:
        self.model_name = model_name
        self.num_classes = num_classes
        self.seed = seed
        self.device = torch.device(device)
        self._data = data
        self._shards: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._model: nn.Module | None = None
        self._initial: NDArrays | None = None

    def initial_parameters(self) -> NDArrays:
        """The model's parameters as initialised under the trainer's seed (fresh copies)."""
        self._get_model()
        assert self._initial is not None
        return {name: array.copy() for name, array in self._initial.items()}

    def __call__(self, device_id: int, ins: FitIns) -> tuple[NDArrays, dict[str, float]]:
        """Train on device ``device_id``'s data as ``ins`` says; new parameters and metrics.

        Metrics: ``loss`` and ``loss_rms`` (the mean and the root mean square of the per-sample
        training loss over the last epoch, the latter Oort's statistical utility per sample),
        ``num_examples`` (``ins.samples``, the weight FedAvg gives the update) and
        ``samples_processed`` (over all epochs). The FedProx term is not part of the loss.
        """
        if ins.epochs < 1 or ins.samples < 1 or ins.batch_size < 1:
            raise ValueError(
                f"epochs, samples and batch_size must be >= 1, got {ins.epochs}, "
                f"{ins.samples}, {ins.batch_size}"
            )
        model = self._get_model()
        X, y = self._shard(device_id)
        set_parameters(model, ins.parameters if ins.parameters is not None else self._initial)
        lr = float(ins.config.get("learning_rate", DEFAULT_LEARNING_RATE))
        momentum = float(ins.config.get("momentum", DEFAULT_MOMENTUM))
        mu = float(ins.config.get("proximal_mu", 0.0))

        call_seed = _derive_seed(self.seed, device_id, ins.model.version)
        generator = torch.Generator().manual_seed(call_seed)
        order = _sample_order(len(y), ins.epochs * ins.samples, generator).to(self.device)
        params = [p for p in model.parameters() if p.requires_grad]
        anchors = [p.detach().clone() for p in params] if mu > 0 else []
        optimizer = MomentumSGD(params, lr=lr, momentum=momentum)

        model.train()
        with _forked_rng(self.device):
            # Seeds whatever randomness the model itself draws (dropout), per call.
            _seed_global(self.device, call_seed)
            for epoch in range(ins.epochs):
                epoch_order = order[epoch * ins.samples : (epoch + 1) * ins.samples]
                loss_sum = torch.zeros((), device=self.device)
                loss_sq_sum = torch.zeros((), device=self.device)
                for start in range(0, ins.samples, ins.batch_size):
                    batch = epoch_order[start : start + ins.batch_size]
                    losses = _per_sample_loss(model, model(X[batch]), y[batch])
                    optimizer.zero_grad()
                    losses.mean().backward()
                    if mu > 0:
                        # The gradient of (mu/2)||w - w_global||^2, added directly: the same
                        # step as putting the term in the loss, without building its graph.
                        with torch.no_grad():
                            for p, anchor in zip(params, anchors, strict=True):
                                p.grad.add_(p - anchor, alpha=mu)
                    optimizer.step()
                    detached = losses.detach()
                    loss_sum += detached.sum()
                    loss_sq_sum += detached.square().sum()

        metrics = {
            "loss": loss_sum.item() / ins.samples,
            "loss_rms": math.sqrt(loss_sq_sum.item() / ins.samples),
            "num_examples": float(ins.samples),
            "samples_processed": float(ins.epochs * ins.samples),
        }
        new = get_parameters(model)
        local_dp = local_dp_settings(ins.config)
        if local_dp is not None:
            # Local DP: the move leaves this device clipped and noised; the noise is seeded
            # from the call's seed, so a run is reproducible (see fedsim.core.privacy).
            reference = ins.parameters if ins.parameters is not None else self._initial
            assert reference is not None
            clip_norm, noise_multiplier = local_dp
            rng = np.random.default_rng([call_seed, LOCAL_DP_STREAM])
            new = privatize(
                new, reference, clip_norm=clip_norm, noise_multiplier=noise_multiplier, rng=rng
            )
        return new, metrics

    def _get_model(self) -> nn.Module:
        if self._model is None:
            with _forked_rng(self.device):
                _seed_global(self.device, self.seed)
                with self.device:
                    self._model = build_model(self.model_name, self.num_classes)
            self._initial = get_parameters(self._model)
        return self._model

    def _shard(self, device_id: int) -> tuple[torch.Tensor, torch.Tensor]:
        shard = self._shards.get(device_id)
        if shard is None:
            if callable(self._data):
                X, y = self._data(device_id)
            elif device_id in self._data:
                X, y = self._data[device_id]
            else:
                raise KeyError(f"no training data for device {device_id}")
            shard = _to_tensors(X, y, self.device)
            if len(shard[1]) == 0:
                raise ValueError(f"device {device_id} has no training data")
            self._shards[device_id] = shard
        return shard


class Evaluator:
    """Accuracy and mean loss of parameters of ``model_name`` on a fixed ``(X, y)``.

    Keeps one model and the data as tensors, so evaluating each round's global model costs only
    the forward passes.
    """

    def __init__(
        self,
        *,
        model_name: str,
        num_classes: int,
        X: Any,
        y: Any,
        device: str | torch.device = "cpu",
        batch_size: int = EVAL_BATCH_SIZE,
    ) -> None:
        self.device = torch.device(device)
        with self.device:
            self._model = build_model(model_name, num_classes)
        self._X, self._y = _to_tensors(X, y, self.device)
        if len(self._y) == 0:
            raise ValueError("no samples to evaluate on")
        self._batch_size = batch_size

    def __call__(self, parameters: NDArrays) -> dict[str, float]:
        set_parameters(self._model, parameters)
        self._model.eval()
        loss_sum = 0.0
        correct = 0
        with torch.no_grad():
            for start in range(0, len(self._y), self._batch_size):
                X = self._X[start : start + self._batch_size]
                y = self._y[start : start + self._batch_size]
                logits = self._model(X)
                loss_sum += F.cross_entropy(logits, y, reduction="sum").item()
                correct += (logits.argmax(dim=1) == y).sum().item()
        n = len(self._y)
        return {"accuracy": correct / n, "loss": loss_sum / n}


def evaluate(
    model_name: str,
    num_classes: int,
    parameters: NDArrays,
    X: Any,
    y: Any,
    *,
    device: str | torch.device = "cpu",
) -> dict[str, float]:
    """``{"accuracy", "loss"}`` of ``parameters`` on ``(X, y)``; see :class:`Evaluator`."""
    evaluator = Evaluator(model_name=model_name, num_classes=num_classes, X=X, y=y, device=device)
    return evaluator(parameters)


class MomentumSGD:
    """SGD with momentum, the same steps as ``torch.optim.SGD(params, lr=, momentum=)``.

    The same arithmetic as torch's single-tensor SGD (the one it runs for CPU tensors): the
    first step's buffer is a copy of the gradient, later ones ``buf * momentum + grad``, and a
    parameter moves by ``-lr * buf``; a parameter without a gradient is left alone. Why not
    torch's own: constructing a ``torch.optim`` optimizer imports ``torch._dynamo`` the first
    time (about a second of a process's start), and the trainer makes one per call, where each
    construction also costs more than the few steps a small client takes.
    """

    def __init__(self, params: list[torch.Tensor], *, lr: float, momentum: float) -> None:
        self.params = params
        self.lr = lr
        self.momentum = momentum
        self._buffers: list[torch.Tensor | None] = [None] * len(params)

    def zero_grad(self) -> None:
        """Drop the gradients (``set_to_none=True``)."""
        for p in self.params:
            p.grad = None

    @torch.no_grad()
    def step(self) -> None:
        """One update of every parameter that has a gradient."""
        for i, p in enumerate(self.params):
            grad = p.grad
            if grad is None:
                continue
            if self.momentum != 0:
                buf = self._buffers[i]
                if buf is None:
                    buf = self._buffers[i] = grad.detach().clone()
                else:
                    buf.mul_(self.momentum).add_(grad)
                grad = buf
            p.add_(grad, alpha=-self.lr)


def _seed_global(device: torch.device, seed: int) -> None:
    """``torch.manual_seed(seed)`` for the generators ``device`` draws from.

    On the CPU only the CPU generator: ``torch.manual_seed`` also queues a seeding of every
    accelerator backend, and records a stack trace for each, some milliseconds per call.
    """
    if device.type == "cpu":
        torch.default_generator.manual_seed(seed)
    else:
        torch.manual_seed(seed)


def _per_sample_loss(model: nn.Module, outputs: Any, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy for classifiers; a model with its own ``training_loss`` supplies it."""
    own = getattr(model, "training_loss", None)
    if own is not None:
        return own(outputs, y)
    return F.cross_entropy(outputs, y, reduction="none")


def _derive_seed(*entropy: int) -> int:
    """A 63-bit seed mixed from non-negative ints: nearby inputs give unrelated streams."""
    state = np.random.SeedSequence(list(entropy)).generate_state(2, dtype=np.uint32)
    return (int(state[0]) << 31) ^ int(state[1])


def _sample_order(n: int, total: int, generator: torch.Generator) -> torch.Tensor:
    """The first ``total`` indices of a stream of independent permutations of ``range(n)``."""
    passes = -(-total // n)
    return torch.cat([torch.randperm(n, generator=generator) for _ in range(passes)])[:total]


def _forked_rng(device: torch.device):
    """Restore the global RNG state(s) afterwards, so training does not disturb the caller."""
    devices = [] if device.type == "cpu" else [device]
    return torch.random.fork_rng(devices=devices, device_type=device.type)


def _to_tensors(X: Any, y: Any, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    X = torch.as_tensor(X, dtype=torch.float32, device=device)
    y = torch.as_tensor(y, dtype=torch.int64, device=device)
    if len(X) != len(y):
        raise ValueError(f"X has {len(X)} samples but y has {len(y)}")
    return X, y
