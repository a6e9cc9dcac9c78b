"""Model specs: the packaged cache is current, misses are measured once, hits skip torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fedsim.core.workload import ModelSpec
from fedsim.ml import spec as spec_module
from fedsim.ml.spec import (
    PACKAGED_CACHE,
    PACKAGED_ENTRIES,
    measure_model_spec,
    model_spec,
    user_cache_path,
)

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def measure_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, int]]:
    """Replaces the measurement with a counting stub; the real one is proven above."""
    calls: list[tuple[str, int, int]] = []

    def counting(name: str, *, input_size: int, num_classes: int) -> ModelSpec:
        calls.append((name, input_size, num_classes))
        return ModelSpec(
            name=name,
            input_size=input_size,
            num_classes=num_classes,
            parameters=10,
            buffers=2,
            forward_flops=input_size,
            train_flops=3 * input_size,
        )

    monkeypatch.setattr(spec_module, "measure_model_spec", counting)
    return calls


def test_packaged_cache_equals_fresh_measurement() -> None:
    # Prepare
    entries = json.loads(PACKAGED_CACHE.read_text())
    packaged = {(e["name"], e["input_size"], e["num_classes"]): e for e in entries}

    # Execute
    fresh = {
        (name, size, classes): measure_model_spec(name, input_size=size, num_classes=classes)
        for name, size, classes in PACKAGED_ENTRIES
    }

    # Assert
    assert packaged.keys() == fresh.keys()
    for key, spec in fresh.items():
        assert ModelSpec(**packaged[key]) == spec, key


def test_packaged_hit_does_not_measure(
    measure_calls: list[tuple[str, int, int]], tmp_path: Path
) -> None:
    # Execute
    spec = model_spec("yolov4", input_size=608, num_classes=80, cache_dir=tmp_path)

    # Assert
    assert spec.state_values == 64_429_405
    assert measure_calls == []
    assert not (tmp_path / "model_specs.json").exists()


def test_miss_is_measured_written_and_read_back(
    measure_calls: list[tuple[str, int, int]], tmp_path: Path
) -> None:
    # Prepare
    first = model_spec("yolov4", input_size=96, num_classes=3, cache_dir=tmp_path)

    # Execute
    second = model_spec("yolov4", input_size=96, num_classes=3, cache_dir=tmp_path)

    # Assert
    assert measure_calls == [("yolov4", 96, 3)]
    assert second == first
    assert (first.input_size, first.num_classes, first.forward_flops) == (96, 3, 96)
    written = json.loads((tmp_path / "model_specs.json").read_text())
    assert [e["input_size"] for e in written] == [96]
    assert sorted(os.listdir(tmp_path)) == ["model_specs.json"]  # no temporary file left


def test_miss_adds_to_existing_user_cache(
    measure_calls: list[tuple[str, int, int]], tmp_path: Path
) -> None:
    # Prepare
    model_spec("yolov4", input_size=64, num_classes=80, cache_dir=tmp_path)

    # Execute
    model_spec("yolov4", input_size=128, num_classes=80, cache_dir=tmp_path)

    # Assert
    written = json.loads((tmp_path / "model_specs.json").read_text())
    assert [e["input_size"] for e in written] == [64, 128]
    assert len(measure_calls) == 2


def test_env_var_overrides_default_cache_dir(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Prepare
    monkeypatch.setenv("FEDSIM_CACHE_DIR", str(tmp_path))

    # Execute
    from_env = user_cache_path()
    explicit = user_cache_path(tmp_path / "other")

    # Assert
    assert from_env == tmp_path / "model_specs.json"
    assert explicit == tmp_path / "other" / "model_specs.json"


def test_unknown_model_names_the_known_ones(tmp_path: Path) -> None:
    # Execute / Assert
    with pytest.raises(KeyError, match=r"unknown model 'yolov9'; known models: .*yolov4"):
        model_spec("yolov9", input_size=608, num_classes=80, cache_dir=tmp_path)


def test_cache_hit_does_not_import_torch(tmp_path: Path) -> None:
    # Prepare
    code = (
        "import sys\n"
        "from fedsim.ml.spec import model_spec\n"
        "spec = model_spec('yolov4', input_size=608, num_classes=80)\n"
        "assert spec.state_values == 64_429_405, spec\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
    )
    python_path = os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": python_path, "FEDSIM_CACHE_DIR": str(tmp_path)}

    # Execute
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True
    )

    # Assert
    assert result.returncode == 0, result.stderr


def test_measurement_falls_back_to_cpu_without_meta_kernels(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare
    from fedsim.ml import flops

    real_forward_flops = flops.forward_flops
    on_meta = measure_model_spec("yolov4", input_size=64, num_classes=80)

    def no_meta_kernel(model, input_shape):
        if next(model.parameters()).is_meta:
            raise NotImplementedError("no meta kernel")
        return real_forward_flops(model, input_shape)

    monkeypatch.setattr(flops, "forward_flops", no_meta_kernel)

    # Execute
    on_cpu = measure_model_spec("yolov4", input_size=64, num_classes=80)

    # Assert
    assert on_cpu == on_meta
