"""The device's side of a task: reading it, its training data, its trainers, the bytes it sends.

Training data comes from ``--data`` (see :class:`~fedsim.real.agent.config.DataSpec`) and is
loaded on the first training that needs it, in the training thread: decoding an image folder
can take long, and the event loop must keep the heartbeats going meanwhile.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any, Protocol

import numpy as np

from fedsim.core.runtime import FitIns, ModelRef, NDArrays
from fedsim.real.agent.client import CHUNK_BYTES
from fedsim.real.agent.config import DataSpec
from fedsim.real.protocol import FitTask

# What a task's config may ask of the device's memory: far above the zoo's models (10 and 80
# classes, inputs of 8 to 608 pixels), far below what would exhaust a host's memory on the
# server's word (a model with 10**12 outputs, synthetic images of 10**6 x 10**6 pixels).
MAX_NUM_CLASSES = 100_000
MAX_INPUT_SIZE = 4096


class TaskError(ValueError):
    """A task this agent cannot run as given (a malformed task, no data for it, ...)."""


class Trainer(Protocol):
    """What trains: ``TorchTrainer``'s call signature."""

    def __call__(self, device_id: int, ins: FitIns) -> tuple[NDArrays, dict[str, float]]: ...


TrainerFactory = Callable[..., Trainer]
"""Makes a trainer from ``model_name``, ``num_classes``, ``data``, ``seed``, ``device``
(keywords), as ``TorchTrainer`` does."""


def fit_ins(task: FitTask, parameters: NDArrays | None) -> FitIns:
    """The ``FitIns`` a fit task describes, with ``parameters`` as the global model."""
    return FitIns(
        model=ModelRef(name=task.model.name, version=task.model.version, nbytes=task.model.nbytes),
        samples=task.samples,
        epochs=task.epochs,
        batch_size=task.batch_size,
        flops=task.flops,
        update_nbytes=task.update_nbytes,
        parameters=parameters,
        config=dict(task.config),
    )


class Trainers:
    """One trainer per (model, num_classes, seed, input size), kept across tasks.

    Keeping it keeps the model instance and the device's shard as tensors, so only the first
    round pays for building and loading them.
    """

    def __init__(
        self,
        *,
        data: DataSpec | None,
        input_size: int | None,
        factory: TrainerFactory,
        torch_device: str,
        plugins: tuple[str, ...] = (),
    ) -> None:
        self._data = data
        self._plugins = plugins
        self._input_size = input_size
        self._factory = factory
        self._torch_device = torch_device
        self._trainers: dict[tuple[str, int, int, int | None], Trainer] = {}

    def get(self, config: Mapping[str, Any], *, default_model: str = "") -> Trainer:
        """The trainer for a task's ``config`` (keys ``model``, ``num_classes``, ``seed``)."""
        if self._data is None:
            raise TaskError("this agent has no training data; start it with --data")
        model_name = str(config.get("model") or default_model)
        if not model_name:
            raise TaskError("the task names no model (config 'model')")
        check_model_allowed(model_name, self._plugins)
        if "num_classes" not in config:
            raise TaskError("the task's config has no 'num_classes'")
        num_classes = _config_int(config, "num_classes", MAX_NUM_CLASSES)
        seed = int(config.get("seed", 0))
        input_size = self._input_size
        if input_size is None and config.get("input_size") is not None:
            input_size = _config_int(config, "input_size", MAX_INPUT_SIZE)
        key = (model_name, num_classes, seed, input_size)
        trainer = self._trainers.get(key)
        if trainer is None:
            spec = self._data

            def load(device_id: int) -> tuple[Any, Any]:
                return load_shard(
                    spec,
                    device_id=device_id,
                    model_name=model_name,
                    num_classes=num_classes,
                    seed=seed,
                    input_size=input_size,
                )

            trainer = self._factory(
                model_name=model_name,
                num_classes=num_classes,
                data=load,
                seed=seed,
                device=resolve_torch_device(self._torch_device),
            )
            self._trainers[key] = trainer
        return trainer


def check_model_allowed(model_name: str, plugins: tuple[str, ...]) -> None:
    """Refuse a model that is neither the zoo's nor the agent's to build: a task's model name
    is the server's word, and an import path runs code here.

    A name is allowed when it is one of the agent's ``--plugin`` paths, or lies under one and
    names an object defined under it (so ``mypkg.models.os.system``, reached through a module
    ``mypkg`` imports, is not), with no part starting with ``_``.
    """
    from fedsim.core.plugins import PluginError, allowed, locate
    from fedsim.ml.spec import MODELS

    if model_name in MODELS or model_name in plugins:
        return
    under = [p for p in plugins if model_name.startswith(p + ".")]
    if under and not any(part.startswith("_") for part in model_name.split(".")):
        try:
            found = locate("the task's model", model_name)
        except PluginError as e:
            raise TaskError(str(e)) from None
        module = str(getattr(found, "__module__", None) or "")
        if allowed(module, under):
            return
    elsewhere = (
        f"nor defined under this agent's --plugin {', '.join(plugins)}"
        if plugins
        else "and this agent has no --plugin to build others from"
    )
    raise TaskError(
        f"the task's model {model_name[:200]!r} is not one of the zoo's "
        f"({', '.join(sorted(MODELS))}) {elsewhere}"
    )


def load_shard(
    spec: DataSpec,
    *,
    device_id: int,
    model_name: str,
    num_classes: int,
    seed: int,
    input_size: int | None,
) -> tuple[Any, Any]:
    """The device's ``(X, y)`` as ``spec`` says, shaped for model ``model_name``."""
    if spec.kind == "npz":
        with np.load(spec.path, allow_pickle=False) as arrays:
            missing = [k for k in ("X", "y") if k not in arrays.files]
            if missing:
                raise TaskError(f"{spec.path} has no array {', '.join(missing)} (needs X and y)")
            return arrays["X"], arrays["y"]
    if input_size is None:
        raise TaskError("the task's config has no 'input_size'; pass --input-size")
    channels = _in_channels(model_name)
    if spec.kind == "folder":
        from fedsim.ml.data import ImageFolderDataset

        dataset = ImageFolderDataset(spec.path, size=input_size, channels=channels)
        return dataset.to_arrays()
    from fedsim.ml.data import synthetic_imagenet

    # Each device draws its own images, as devices hold different data.
    X, y = synthetic_imagenet(
        spec.count,
        size=input_size,
        num_classes=num_classes,
        seed=int(np.random.SeedSequence([seed, device_id]).generate_state(1)[0]),
    )
    return X[:, :channels].contiguous(), y


# A short calibration (a second or two for the digits nets on one core): the agent measures
# itself at every start and whenever the server asks, between tasks.
CALIBRATION_BATCH_SIZES = (8, 16, 32, 64)
CALIBRATION_REPEATS = 10
CALIBRATION_WARMUP = 3
CALIBRATION_IO_REPEATS = 10
CALIBRATION_REQUESTS = 20
CALIBRATION_PACED_DOWNLOADS = 5  # each 0.05 s: a download of 100 segments, paced
CALIBRATION_PERSISTS = 10


def measure_profile(
    model: str,
    state_dir: str | os.PathLike | None = None,
    *,
    plugins: tuple[str, ...] = (),
    shape: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """This device's measured hardware profile for ``model`` (the fields of a ``kind:
    measured`` profile, as ``fedsim calibrate`` writes one), timed with the agent's threads;
    keeping an update is timed on the disk of ``state_dir`` (the agent's state directory).

    ``model`` is a zoo model, timed at the zoo's shape, or a user's by import path, allowed
    under ``plugins`` as a task's model is, timed at ``shape`` (input size, class count).
    Each batch size's fastest step counts, not the median: with few repeats, and other
    processes (another agent, the user's work) taking the core now and then, the fastest step
    is the one that shows what the device does when it trains. Raises :class:`TaskError` for
    a model the agent may not build, or timings that do not grow with the batch size (a busy
    host).
    """
    from fedsim.core.plugins import PluginError
    from fedsim.ml.calibrate import calibrate, profile_document
    from fedsim.ml.spec import MODELS
    from fedsim.real.request_cost import with_device_costs

    # The model may be the server's word (a calibration request): the same allowlist as a task.
    check_model_allowed(model, plugins)
    input_size: int | None = None  # a zoo model: the zoo's shape
    num_classes: int | None = None
    if model not in MODELS:
        if shape is None:
            raise TaskError(
                f"{model} is a user's model: start the agent with --calibrate-input-size and "
                "--calibrate-num-classes to time it"
            )
        input_size, num_classes = shape
    try:
        cal = calibrate(
            model,
            CALIBRATION_BATCH_SIZES,
            repeats=CALIBRATION_REPEATS,
            warmup=CALIBRATION_WARMUP,
            threads=None,
            statistic="min",
            io_repeats=CALIBRATION_IO_REPEATS,
            by="fedsim agent",
            input_size=input_size,
            num_classes=num_classes,
        )
    except PluginError as e:  # the user's factory raised, or built no torch.nn.Module
        raise TaskError(str(e)) from None
    if cal.fit.model.per_sample_s == 0:
        raise TaskError(
            f"{model}'s step times did not grow with the batch size (a busy host?); "
            "not reporting them"
        )
    measured = with_device_costs(
        cal,
        requests=CALIBRATION_REQUESTS,
        paced_downloads=CALIBRATION_PACED_DOWNLOADS,
        persists=CALIBRATION_PERSISTS,
        directory=state_dir,
    )
    return profile_document(measured)


def resolve_torch_device(name: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; other names unchanged."""
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


async def padding(nbytes: int) -> AsyncIterator[bytes]:
    """``nbytes`` zero bytes, in chunks: a timing-only update's body."""
    chunk = bytes(CHUNK_BYTES)
    for start in range(0, nbytes, CHUNK_BYTES):
        yield chunk[: min(CHUNK_BYTES, nbytes - start)]


async def data_bytes(spec: DataSpec | None, nbytes: int) -> AsyncIterator[bytes]:
    """``nbytes`` bytes of the device's data: the data file's, repeated as needed, else noise.

    The noise is seeded (the same bytes every time) and incompressible, so that a link that
    compresses cannot make the transfer cheaper than real data would be.
    """
    if spec is not None and spec.kind == "npz" and spec.path.stat().st_size > 0:
        with open(spec.path, "rb") as f:
            sent = 0
            while sent < nbytes:
                chunk = f.read(min(CHUNK_BYTES, nbytes - sent))
                if not chunk:
                    f.seek(0)
                    continue
                sent += len(chunk)
                yield chunk
        return
    block = np.random.default_rng(0).bytes(CHUNK_BYTES)
    for start in range(0, nbytes, CHUNK_BYTES):
        yield block[: min(CHUNK_BYTES, nbytes - start)]


def _in_channels(model_name: str) -> int:
    """The input channels model ``model_name`` takes (1 for the digits nets, else RGB)."""
    from fedsim.core.plugins import PluginError
    from fedsim.ml.models import in_channels

    try:
        return in_channels(model_name)
    except (KeyError, PluginError) as e:
        raise TaskError(str(e.args[0] if isinstance(e, KeyError) else e)) from None


def _config_int(config: Mapping[str, Any], key: str, high: int) -> int:
    """The task config's ``key`` as an integer in 1..``high``; :class:`TaskError` otherwise."""
    value = config[key]
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if not 1 <= number <= high:
        raise TaskError(f"the task's config {key!r} must be an integer in 1..{high}, got {value!r}")
    return number
