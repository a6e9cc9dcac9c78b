"""Measured ``ModelSpec``s, served from caches so a run does not rebuild the model.

``model_spec`` looks in the packaged cache (``specs/model_specs.json``, committed and checked
against a fresh measurement by a test), then in the user cache (``cache_dir``, else
``$FEDSIM_CACHE_DIR``, else ``~/.cache/fedsim``); a miss is measured and added to the user
cache. torch is imported only to measure, so a cache hit costs no torch import.

A user's model (an import path, ``workload.model._target_``) is measured the same way and
cached under its import path.

``python -m fedsim.ml.spec --refresh`` measures the packaged entries again and rewrites the file.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib
import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedsim.core.plugins import PluginError, factory, is_import_path, locate
from fedsim.core.workload import ModelSpec

if TYPE_CHECKING:
    import torch

# Name -> "module:class", resolved on demand so that naming a model does not import torch. A
# name with a dot is instead the import path of a user's model (fedsim.ml.models.model_factory).
MODELS = {
    "yolov4": "fedsim.ml.yolov4:YOLOv4",
    "digits_cnn": "fedsim.ml.models:DigitsCNN",
    "digits_mlp": "fedsim.ml.models:DigitsMLP",
}

PACKAGED_CACHE = Path(__file__).with_name("specs") / "model_specs.json"
PACKAGED_ENTRIES = (
    ("yolov4", 608, 80),
    ("yolov4", 512, 80),
    ("digits_cnn", 8, 10),
    ("digits_mlp", 8, 10),
)
CACHE_FILE_NAME = "model_specs.json"
CACHE_DIR_ENV = "FEDSIM_CACHE_DIR"

_Key = tuple[str, int, int]


def model_spec(
    name: str, *, input_size: int, num_classes: int, cache_dir: str | os.PathLike | None = None
) -> ModelSpec:
    """The spec of model ``name`` (a built-in name or an import path) at ``input_size``, from
    a cache or measured and cached."""
    _check_known(name)
    key = (name, input_size, num_classes)
    spec = _read_cache(PACKAGED_CACHE).get(key)
    if spec is not None:
        return spec
    # A user's model is cached under its import path and its module's source, so that an
    # edit to the model is measured again rather than served stale.
    cached = name if name in MODELS else f"{name}@{_source_digest(name)}"
    user_cache = user_cache_path(cache_dir)
    specs = _read_cache(user_cache)
    spec = specs.get((cached, input_size, num_classes))
    if spec is None:
        spec = measure_model_spec(name, input_size=input_size, num_classes=num_classes)
        specs[(cached, input_size, num_classes)] = dataclasses.replace(spec, name=cached)
        _write_cache(user_cache, specs)
    return dataclasses.replace(spec, name=name)


def measure_model_spec(name: str, *, input_size: int, num_classes: int) -> ModelSpec:
    """Build model ``name`` and count its state and its per-sample FLOPs at ``input_size``."""
    _check_known(name)
    import torch

    try:
        return _measure(name, input_size, num_classes, torch.device("meta"))
    except NotImplementedError:
        # An op without a meta kernel: real compute on the CPU counts the same, only slower.
        return _measure(name, input_size, num_classes, torch.device("cpu"))


def user_cache_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where missed specs are written: ``cache_dir``, ``$FEDSIM_CACHE_DIR`` or ~/.cache/fedsim."""
    if cache_dir is None:
        cache_dir = os.environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "fedsim"
    return Path(cache_dir) / CACHE_FILE_NAME


def _measure(name: str, input_size: int, num_classes: int, device: torch.device) -> ModelSpec:
    import torch

    from fedsim.ml import flops

    with torch.device(device):
        model = new_model(name, num_classes)
    # Integer buffers (BatchNorm's num_batches_tracked) are bookkeeping, not shipped weights.
    buffers = sum(b.numel() for b in model.buffers() if b.is_floating_point())
    # A model states its input channels when it does not take RGB (the digits nets are grey).
    shape = (1, getattr(model_factory(name), "in_channels", 3), input_size, input_size)
    return ModelSpec(
        name=name,
        input_size=input_size,
        num_classes=num_classes,
        parameters=sum(p.numel() for p in model.parameters()),
        buffers=buffers,
        forward_flops=flops.forward_flops(model, shape),
        train_flops=flops.train_flops(model.train(), shape),
    )


def model_factory(name: str) -> Callable[..., Any]:
    """The class or factory model ``name`` names: a built-in name, or an import path."""
    if name in MODELS:
        module_name, class_name = MODELS[name].split(":")
        built_in: Callable[..., Any] = getattr(importlib.import_module(module_name), class_name)
        return built_in
    _check_known(name)  # past it, an import path
    return factory("workload.model", name)


def new_model(name: str, num_classes: int) -> torch.nn.Module:
    """A fresh instance of model ``name``, checked to be a ``torch.nn.Module``."""
    import torch

    made = model_factory(name)(num_classes=num_classes)
    if not isinstance(made, torch.nn.Module):
        raise PluginError(
            f"workload.model: {name} returned a {type(made).__name__}, not a torch.nn.Module"
        )
    return made


def calibration_shape(
    model: str, input_size: int | None = None, num_classes: int | None = None
) -> tuple[int, int]:
    """The input size and class count to time ``model`` at: those given, else the ones the zoo
    measures a zoo model at (its first packaged entry).

    A user's model (an import path) has no default, so both are needed; ``ValueError`` says
    so, and for a size or count below 1; ``KeyError`` for a name that is neither.
    """
    _check_known(model)
    for what, value in (("input size", input_size), ("class count", num_classes)):
        if value is not None and value < 1:
            raise ValueError(f"{model}: the {what} must be >= 1, got {value}")
    if model in MODELS:
        size, classes = next((s, c) for name, s, c in PACKAGED_ENTRIES if name == model)
        return input_size or size, num_classes or classes
    if input_size is None or num_classes is None:
        raise ValueError(
            f"{model} is a user's model, not one of the zoo's ({', '.join(sorted(MODELS))}): "
            "give the input size and class count to time it at"
        )
    return input_size, num_classes


def _source_digest(name: str) -> str:
    """The first 16 hex digits of the sha256 of the source file defining model ``name``."""
    made_by = locate("workload.model", name)
    module = sys.modules.get(getattr(made_by, "__module__", "") or "")
    source = getattr(module, "__file__", None)
    if source is None or not Path(source).is_file():
        return "no-source"
    return hashlib.sha256(Path(source).read_bytes()).hexdigest()[:16]


def _check_known(name: str) -> None:
    if name not in MODELS and not is_import_path(name):
        raise KeyError(
            f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}, or an import "
            "path (_target_: mypkg.MyNet)"
        )


def _read_cache(path: Path) -> dict[_Key, ModelSpec]:
    try:
        entries = json.loads(path.read_text())
    except FileNotFoundError:
        return {}
    except json.JSONDecodeError:
        # A damaged user cache only costs a re-measurement; it is rewritten on the next miss.
        return {}
    specs = (ModelSpec(**entry) for entry in entries)
    return {(s.name, s.input_size, s.num_classes): s for s in specs}


def _write_cache(path: Path, specs: dict[_Key, ModelSpec]) -> None:
    """Write atomically, so a reader in another process never sees half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    entries = [dataclasses.asdict(specs[key]) for key in sorted(specs)]
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(entries, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fedsim.ml.spec", description=__doc__)
    parser.add_argument(
        "--refresh", action="store_true", help=f"re-measure and rewrite {PACKAGED_CACHE.name}"
    )
    args = parser.parse_args(argv)
    if not args.refresh:
        parser.error("nothing to do; pass --refresh")
    specs = {
        key: measure_model_spec(key[0], input_size=key[1], num_classes=key[2])
        for key in PACKAGED_ENTRIES
    }
    _write_cache(PACKAGED_CACHE, specs)
    print(f"wrote {len(specs)} specs to {PACKAGED_CACHE}")


if __name__ == "__main__":
    main()
