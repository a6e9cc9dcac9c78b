"""Hardware profiles from config: spec-sheet ones as before, measured ones, and what is refused."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from omegaconf import OmegaConf

from fedsim.config import (
    GB,
    ConfigError,
    build_spec,
    compose,
    conf_dir,
    hardware_profile,
    load_hardware_profile,
)
from fedsim.core.calibration import StepModel
from fedsim.core.topology import MEASURED, SPEC
from fedsim.schema import HardwareConf

MEASURED_CONF: dict[str, Any] = {
    "kind": "measured",
    "source": "fedsim calibrate on host, 2026-01-01, torch 2.x, 1 thread",
    "memory_gb": 16,
    "steps": {
        "digits_cnn": {"overhead_s": 7e-4, "per_sample_s": 2e-5, "flops_per_sample": 2e6},
        "digits_mlp": {"overhead_s": 3e-4, "per_sample_s": 1e-6, "flops_per_sample": 2e4},
    },
    "serialize_bytes_per_s": 4e9,
    "load_bytes_per_s": 3e9,
    "aggregate_bytes_per_s": 6e9,
    "cold_start_s": 0.8,
    "request_cpu_s": 2e-4,
    "segment_cpu_s": 3e-5,
    "persist_cpu_s": 1e-3,
    "persist_io_s": 2e-2,
    "round_overhead_s": 3e-3,
    "task_overhead_s": 1.5e-3,
}
SPEC_CONF: dict[str, Any] = {
    "memory_gb": 1,
    "train_on": "cpu",
    "cpu_peak_gflops": 10,
    "efficiency": 0.5,
    "memory_bandwidth_gbps": 1,
}


def profile(values: dict[str, Any], name: str = "p"):
    return hardware_profile(name, OmegaConf.merge(OmegaConf.structured(HardwareConf), values))


@pytest.mark.parametrize("path", sorted((conf_dir() / "hardware").glob("*.yaml")), ids=str)
def test_every_shipped_profile_loads_and_says_what_kind_it_is(path):
    # Execute
    hw = load_hardware_profile(path)

    # Assert: the spec-sheet profiles load as before; a calibrated one carries its step models.
    assert hw.source and hw.effective_flops > 0 and hw.memory_bandwidth > 0
    if hw.kind == SPEC:
        assert not hw.steps
    else:
        assert hw.kind == MEASURED and hw.steps and hw.source.startswith("fedsim calibrate")


def test_a_measured_profile_with_evaluation_step_models_loads_them(tmp_path):
    # Prepare: a profile file as `fedsim calibrate` writes one, evaluation step models and all.
    path = tmp_path / "evaluated.yaml"
    evaluation = {"overhead_s": 4e-4, "per_sample_s": 1.3e-5, "residual_s": 5e-5}
    path.write_text(
        OmegaConf.to_yaml(
            {
                **MEASURED_CONF,
                "eval_steps": {"digits_cnn": {**evaluation, "batch_sizes": [32, 64, 512]}},
            }
        )
    )

    # Execute
    hw = load_hardware_profile(path)

    # Assert: the evaluation step model as written, the training ones and the rest unchanged.
    assert hw.eval_steps == {"digits_cnn": StepModel(overhead_s=4e-4, per_sample_s=1.3e-5)}
    assert replace(hw, eval_steps={}) == profile(MEASURED_CONF, name="evaluated")


def test_a_profile_without_evaluation_step_models_has_none():
    # Execute
    measured, spec = profile(MEASURED_CONF), profile(SPEC_CONF)

    # Assert: older profiles load as before, with no evaluation step model.
    assert measured.eval_steps == {} and spec.eval_steps == {}


def test_a_measured_profile_needs_no_spec_sheet_figures():
    # Execute
    hw = profile(MEASURED_CONF)

    # Assert: step models as written; other work at the fastest measured rate (2e6 / 2e-5 =
    # 1e11 FLOP/s beats 2e4 / 1e-6 = 2e10); memory traffic at the aggregation throughput.
    assert hw.kind == MEASURED and hw.source.startswith("fedsim calibrate on host")
    assert hw.steps["digits_cnn"] == StepModel(overhead_s=7e-4, per_sample_s=2e-5)
    assert hw.effective_flops == pytest.approx(1e11)
    assert hw.memory_bandwidth == 6e9 and hw.memory_bytes == 16 * GB
    assert (hw.serialize_bytes_per_s, hw.load_bytes_per_s) == (4e9, 3e9)
    assert hw.cold_start_s == 0.8
    assert (hw.request_cpu_s, hw.round_overhead_s) == (2e-4, 3e-3)
    assert hw.segment_cpu_s == 3e-5
    assert (hw.persist_cpu_s, hw.persist_io_s) == (1e-3, 2e-2)
    assert hw.task_overhead_s == 1.5e-3


@pytest.mark.parametrize(
    "key",
    [
        "cold_start_s",
        "request_cpu_s",
        "segment_cpu_s",
        "persist_cpu_s",
        "persist_io_s",
        "round_overhead_s",
        "task_overhead_s",
    ],
)
def test_a_profile_without_a_measured_time_has_none(key):
    # Execute
    measured, spec = profile(without(key)), profile(SPEC_CONF)

    # Assert
    assert getattr(measured, key) == 0.0 and getattr(spec, key) == 0.0


def test_spec_sheet_figures_beside_measured_ones_time_the_other_work():
    # Execute
    hw = profile(
        {
            **MEASURED_CONF,
            "train_on": "cpu",
            "cpu_peak_gflops": 100,
            "efficiency": 0.5,
            "memory_bandwidth_gbps": 20,
        }
    )

    # Assert
    assert hw.effective_flops == pytest.approx(50e9)
    assert hw.memory_bandwidth == 20 * GB


def without(key: str) -> dict[str, Any]:
    return {k: v for k, v in MEASURED_CONF.items() if k != key}


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({**MEASURED_CONF, "kind": "guessed"}, "hardware.p.kind: must be one of spec, measured"),
        (without("steps"), "hardware.p.steps: a measured profile needs at least one step model"),
        (without("source"), "hardware.p.source: a measured profile must say where"),
        (
            {**MEASURED_CONF, "steps": {"digits_cnn": {"overhead_s": -1e-3, "per_sample_s": 1e-5}}},
            "hardware.p.steps.digits_cnn.overhead_s: must be >= 0, got -0.001",
        ),
        (
            {**MEASURED_CONF, "steps": {"digits_cnn": {"overhead_s": 1e-3, "per_sample_s": 1e-5}}},
            "hardware.p.efficiency: required unless a step gives flops_per_sample",
        ),
        (
            {**MEASURED_CONF, "load_bytes_per_s": 0},
            "hardware.p.load_bytes_per_s: must be > 0, got 0",
        ),
        (without("aggregate_bytes_per_s"), "memory_bandwidth_gbps: required (or aggregate"),
        (
            {**MEASURED_CONF, "cold_start_s": -0.1},
            "hardware.p.cold_start_s: must be >= 0, got -0.1",
        ),
        (
            {**MEASURED_CONF, "cold_start_s": float("inf")},
            "hardware.p.cold_start_s: must be a finite number, got inf",
        ),
        (
            {**SPEC_CONF, "cold_start_s": 1.0},
            "hardware.p.cold_start_s: measured figures belong to a profile with kind: measured",
        ),
        (
            {**MEASURED_CONF, "request_cpu_s": -1e-3},
            "hardware.p.request_cpu_s: must be >= 0, got -0.001",
        ),
        (
            {**MEASURED_CONF, "request_cpu_s": float("nan")},
            "hardware.p.request_cpu_s: must be >= 0, got nan",
        ),
        (
            {**MEASURED_CONF, "round_overhead_s": float("inf")},
            "hardware.p.round_overhead_s: must be a finite number, got inf",
        ),
        (
            {**SPEC_CONF, "request_cpu_s": 1e-3},
            "hardware.p.request_cpu_s: measured figures belong to a profile with kind: measured",
        ),
        (
            {**SPEC_CONF, "round_overhead_s": 1e-3},
            "hardware.p.round_overhead_s: measured figures belong to a profile with kind: measured",
        ),
        (
            {**MEASURED_CONF, "train_on": "cpu", "cpu_peak_gflops": 100},
            "hardware.p.efficiency: required",
        ),
        (
            {"memory_gb": 1, "train_on": "cpu", "cpu_peak_gflops": 10, "memory_bandwidth_gbps": 1},
            "hardware.p.efficiency: required",
        ),
        (
            {"memory_gb": 1, "train_on": "cpu", "efficiency": 0.5, "memory_bandwidth_gbps": 1},
            "hardware.p.cpu_peak_gflops: required",
        ),
        (
            {
                "memory_gb": 1,
                "train_on": "cpu",
                "cpu_peak_gflops": 10,
                "efficiency": 0.5,
                "memory_bandwidth_gbps": 1,
                "steps": MEASURED_CONF["steps"],
            },
            "hardware.p.steps: measured figures belong to a profile with kind: measured",
        ),
        (
            {**SPEC_CONF, "eval_steps": {"digits_cnn": {"overhead_s": 1e-3, "per_sample_s": 1e-5}}},
            "hardware.p.eval_steps: measured figures belong to a profile with kind: measured",
        ),
        (
            {
                **MEASURED_CONF,
                "eval_steps": {"digits_cnn": {"overhead_s": 1e-3, "per_sample_s": -1e-5}},
            },
            "hardware.p.eval_steps.digits_cnn.per_sample_s: must be >= 0, got -1e-05",
        ),
    ],
)
def test_a_profile_that_cannot_work_is_refused_naming_the_field(values, message):
    # Execute / Assert
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        profile(values)


def test_an_unknown_profile_name_lists_the_profiles_found_by_name_too():
    # Prepare: conf/hardware/measured_vm.yaml is found by name when a device names it, but the
    # error for a misspelt name listed only the profiles the topology's config included.
    cfg = compose(["+experiment=fl_digits", "topology.devices.3.hardware=measured_mv"])

    # Execute
    with pytest.raises(ConfigError) as refused:
        build_spec(cfg, conf_dir())

    # Assert
    message = str(refused.value)
    assert message.startswith(
        "topology.devices[3].hardware: unknown hardware profile 'measured_mv'"
    )
    assert "measured_vm" in message and "rpi4" in message
