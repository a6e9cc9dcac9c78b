"""``fedsim calibrate``: it measures this host, and the simulator times a device by the result."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from omegaconf import OmegaConf

import fedsim.ml.calibrate as calibration
from fedsim.calibrate import main
from fedsim.config import build_topology, load_hardware_profile
from fedsim.core.calibration import StepModel, fit_step_model
from fedsim.core.events import EventKind
from fedsim.core.runtime import Cost, FitIns, ModelRef, Task
from fedsim.core.topology import MEASURED, HardwareProfile
from fedsim.ml.spec import model_spec
from fedsim.schema import Config
from fedsim.sim.compute import compute_seconds
from fedsim.sim.runtime import SimTransport

ROOT = Path(__file__).resolve().parents[2]
BYO = ROOT / "examples" / "byo"  # a user's package: byo_fl
BYO_MODEL = "byo_fl.model.TinyNet"

SPEC_SERVER = {
    "description": "server",
    "cpu_peak_gflops": 100.0,
    "memory_gb": 8,
    "memory_bandwidth_gbps": 10,
    "train_on": "cpu",
    "efficiency": 1.0,
}


def topology_with(hardware: str, conf_dir: Path):
    """A server and one trainer whose hardware is ``hardware``, resolved through the config."""
    cfg = OmegaConf.merge(
        OmegaConf.structured(Config),
        {
            "hardware": {"spec_server": SPEC_SERVER},
            "network": {"lan": {"bandwidth_mbps": 1e6, "latency_ms": 0}},
            "topology": {
                "name": "pair",
                "groups": [{"id": 0, "description": "g", "uplink": "lan"}],
                "devices": [
                    {"id": 0, "description": "s", "group": 0, "id_in_group": 0,
                     "role": "server", "hardware": "spec_server", "link": {"network": "lan"}},
                    {"id": 1, "description": "t", "group": 0, "id_in_group": 1,
                     "role": "trainer", "hardware": hardware, "link": {"network": "lan"}},
                ],
            },
        },
    )  # fmt: skip
    return build_topology(cfg, conf_dir)


def train_seconds(topology, *, model: str, samples: int, batch_size: int, epochs: int, flops=0.0):
    """The simulated duration of one FitIns's training on device 1."""
    transport = SimTransport(topology, seed=0)
    ins = FitIns(
        model=ModelRef(name=model, version=0, nbytes=1000),
        samples=samples,
        epochs=epochs,
        batch_size=batch_size,
        flops=flops,
        update_nbytes=1000,
    )
    transport.run([Task(id="t", device=1, ins=ins)])
    (train,) = [e for e in transport.events if e.kind == EventKind.TRAIN]
    return train.duration


@pytest.fixture(scope="module")
def calibrated(tmp_path_factory) -> tuple[Path, HardwareProfile, str]:
    """``fedsim calibrate`` run once on digits_cnn, small: its profile and its summary."""
    conf = tmp_path_factory.mktemp("conf")
    out = conf / "hardware" / "this_host.yaml"
    args = ["--batch-sizes", "4,16,64", "--repeats", "5", "--warmup", "2", "--threads", "1"]
    args += ["--statistic", "min"]  # the host running the tests may be busy
    proc = subprocess.run(
        [sys.executable, "-m", "fedsim", "calibrate", *args, "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return conf, load_hardware_profile(out), proc.stdout


def test_calibrate_writes_a_measured_profile_that_the_config_loads(calibrated):
    # Prepare / Execute: the fixture ran the command.
    conf, profile, stdout = calibrated

    # Assert
    assert profile.kind == MEASURED and profile.name == "this_host"
    assert profile.source.startswith("fedsim calibrate on ") and "torch " in profile.source
    step = profile.steps["digits_cnn"]
    assert step.per_sample_s > 0 and step.overhead_s >= 0
    # Work without a step model runs at the rate the fit measured at large batches.
    digits_cnn_train_flops = 2_006_784  # fedsim/ml/specs/model_specs.json, 8x8 input
    assert profile.effective_flops == pytest.approx(digits_cnn_train_flops / step.per_sample_s)
    assert profile.serialize_bytes_per_s > 0 and profile.load_bytes_per_s > 0
    assert profile.memory_bandwidth == profile.aggregate_bytes_per_s > 0
    # Building the model and taking a first step costs something over a steady step, and
    # less than the seconds a whole training task takes.
    written = OmegaConf.load(conf / "hardware" / "this_host.yaml")
    assert written.cold_start_s == profile.cold_start_s and 0 <= profile.cold_start_s < 10
    assert "cold start" in stdout
    # Keeping an update on disk (the agent's fsyncs) was timed: some processor, and a wait
    # for the disk that may be 0 on a disk that ignores fsync, never negative.
    assert written.persist_cpu_s == profile.persist_cpu_s > 0
    assert written.persist_io_s == profile.persist_io_s >= 0
    assert "keeping an update on disk" in stdout
    # Each segment of a body that a link paces costs the HTTP client some processor time.
    assert written.segment_cpu_s == profile.segment_cpu_s and 0 < profile.segment_cpu_s < 0.1
    assert "per segment of a paced body" in stdout
    # A training task costs the trainer something beyond its steps, far less than a second.
    assert written.task_overhead_s == profile.task_overhead_s and 0 <= profile.task_overhead_s < 1
    assert "residual" in stdout and "this_host.yaml" in stdout.splitlines()[-1]


def test_a_device_with_the_calibrated_profile_trains_by_its_step_model(calibrated):
    # Prepare: a topology naming the profile, found in conf/hardware/ as any profile is.
    conf, profile, _ = calibrated
    topology = topology_with("this_host", conf)
    step = profile.steps["digits_cnn"]

    # Execute: 100 samples in batches of 32 (4 steps) for 2 epochs.
    seconds = train_seconds(topology, model="digits_cnn", samples=100, batch_size=32, epochs=2)

    # Assert: the steps, the device's cold start (its first task), the trainer's overhead of
    # a task, and loading the 1000-byte model and serializing the 1000-byte update at the
    # measured rates.
    assert topology.devices[1].hardware.kind == MEASURED
    steps = 2 * (4 * step.overhead_s + 100 * step.per_sample_s)
    io = 1000 / profile.load_bytes_per_s + 1000 / profile.serialize_bytes_per_s
    assert seconds == pytest.approx(steps + profile.cold_start_s + profile.task_overhead_s + io)


def test_calibrate_fits_the_servers_evaluation_and_writes_it(calibrated):
    # Prepare / Execute: the fixture ran the command.
    conf, profile, stdout = calibrated

    # Assert: an evaluation step model of the model, fitted at the default sample counts,
    # written with its residual and named in the header and the summary.
    evaluation = profile.eval_steps["digits_cnn"]
    assert evaluation.per_sample_s > 0 and evaluation.overhead_s >= 0
    path = conf / "hardware" / "this_host.yaml"
    written = OmegaConf.load(path).eval_steps.digits_cnn
    assert list(written.batch_sizes) == list(calibration.EVAL_SAMPLES)
    assert written.residual_s >= 0 and "flops_per_sample" not in written
    assert "# eval_steps: evaluating n samples" in path.read_text()
    assert "  evaluation = " in stdout


class FakeClock:
    """A clock that moves only when a fake evaluation says it took time."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def fake_evaluator(clock: FakeClock, truth: StepModel, calls: list[int]) -> type:
    """An ``Evaluator`` stand-in: each call of one over n samples takes ``truth``'s seconds
    for one batch of n on ``clock``, and is noted in ``calls``."""

    class Evaluator:
        def __init__(self, *, model_name: str, num_classes: int, X, y) -> None:
            self.n = len(y)

        def __call__(self, parameters) -> dict[str, float]:
            calls.append(self.n)
            clock.now += truth.seconds(self.n)
            return {"accuracy": 0.0, "loss": 0.0}

    return Evaluator


def test_evaluation_timings_fit_back_to_a_known_overhead_and_per_sample_cost(monkeypatch):
    # Prepare: evaluations that take 0.4 ms a call plus 13 us a sample, on a fake clock.
    truth = StepModel(overhead_s=4e-4, per_sample_s=1.3e-5)
    clock, calls = FakeClock(), []
    monkeypatch.setattr(calibration, "Evaluator", fake_evaluator(clock, truth, calls))
    state = calibration.model_state("digits_cnn", 10)

    # Execute
    seconds = calibration.time_evaluation(
        "digits_cnn", state, (32, 128, 512), input_size=8, num_classes=10, clock=clock
    )
    sizes = sorted(seconds)
    fit = fit_step_model(sizes, [min(seconds[n]) for n in sizes])

    # Assert: every count timed EVAL_REPEATS times, after one larger untimed call and the
    # warm-up ones; the fit gives back the figures with no residual.
    assert {n: len(t) for n, t in seconds.items()} == dict.fromkeys(sizes, calibration.EVAL_REPEATS)
    assert (
        calls[0] == 1024 and calls.count(32) == calibration.EVAL_WARMUP + calibration.EVAL_REPEATS
    )
    assert fit.model.overhead_s == pytest.approx(truth.overhead_s, rel=1e-9)
    assert fit.model.per_sample_s == pytest.approx(truth.per_sample_s, rel=1e-9)
    assert fit.residual_s == pytest.approx(0.0, abs=1e-12)


def test_evaluation_timing_stops_at_its_budget_after_the_fewest_repeats(monkeypatch):
    # Prepare: a model whose evaluation of 32 samples takes 1 s.
    clock, calls = FakeClock(), []
    slow = StepModel(overhead_s=0.0, per_sample_s=1 / 32)
    monkeypatch.setattr(calibration, "Evaluator", fake_evaluator(clock, slow, calls))
    state = calibration.model_state("digits_cnn", 10)

    # Execute: rounds of 1 + 2 + 3 s against a budget of 2 s.
    seconds = calibration.time_evaluation(
        "digits_cnn", state, (32, 64, 96), input_size=8, num_classes=10, clock=clock
    )

    # Assert: the budget is spent after the first round, yet three rounds are timed.
    assert calibration.EVAL_BUDGET_S < 6
    assert {n: len(t) for n, t in seconds.items()} == dict.fromkeys(
        (32, 64, 96), calibration.MIN_EVAL_REPEATS
    )


def test_evaluation_counts_beyond_one_evaluation_batch_are_refused():
    state = calibration.model_state("digits_cnn", 10)

    with pytest.raises(ValueError, match="within one evaluation batch, 1 to 1024"):
        calibration.time_evaluation("digits_cnn", state, (32, 2048), input_size=8, num_classes=10)


def test_a_model_too_slow_for_the_default_counts_is_evaluated_at_its_batch_sizes():
    # Prepare: a training step of 128 samples takes 0.64 s, of 32 samples 0.16 s.
    slow = StepModel(overhead_s=0.0, per_sample_s=5e-3)
    quick = StepModel(overhead_s=5e-4, per_sample_s=2e-5)

    # Execute / Assert: fewer than three default counts fit the limit, so the training batch
    # sizes (those within one evaluation batch) are timed instead.
    assert calibration.eval_samples(slow, [8, 16, 32, 64]) == [8, 16, 32, 64]
    assert calibration.eval_samples(quick, [8, 16, 32, 64]) == list(calibration.EVAL_SAMPLES)


def test_calibrate_times_a_users_model_by_import_path(tmp_path):
    # Prepare: examples/byo's package on the path, as a user's own package would be.
    out = tmp_path / "hardware" / "byo_host.yaml"
    paths = [str(BYO), str(ROOT), os.environ.get("PYTHONPATH", "")]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}
    args = ["--model", BYO_MODEL, "--input-size", "8", "--num-classes", "4"]
    args += ["--batch-sizes", "4,16,64", "--repeats", "5", "--warmup", "2", "--threads", "1"]
    args += ["--statistic", "min", "--out", str(out)]

    # Execute
    proc = subprocess.run(
        [sys.executable, "-m", "fedsim", "calibrate", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )

    # Assert: the step model is keyed by the import path, the workload's name for the model,
    # and counts the FLOPs of TinyNet at the shape asked for; a device with it trains by it.
    assert proc.returncode == 0, proc.stderr
    profile = load_hardware_profile(out)
    assert list(profile.steps) == [BYO_MODEL]
    step = profile.steps[BYO_MODEL]
    sys.path.insert(0, str(BYO))
    try:
        flops = model_spec(BYO_MODEL, input_size=8, num_classes=4, cache_dir=tmp_path).train_flops
    finally:
        sys.path.remove(str(BYO))
    written = OmegaConf.load(out).steps[BYO_MODEL]
    assert written.flops_per_sample == flops and step.per_sample_s > 0
    assert proc.stdout.startswith(f"{BYO_MODEL} on 1 thread")
    topology = topology_with("byo_host", tmp_path)
    seconds = train_seconds(topology, model=BYO_MODEL, samples=64, batch_size=16, epochs=1)
    io = 1000 / profile.load_bytes_per_s + 1000 / profile.serialize_bytes_per_s
    expected = 4 * step.overhead_s + 64 * step.per_sample_s + profile.cold_start_s + io
    expected += profile.task_overhead_s
    assert seconds == pytest.approx(expected)


def hand_set_topology(conf_dir: Path, extra: str = ""):
    """:func:`topology_with` a measured profile set by hand: digits_cnn steps of 10 ms + 1 ms
    per sample (1 GFLOP/s for anything else), and ``extra`` YAML lines."""
    (conf_dir / "hardware").mkdir()
    (conf_dir / "hardware" / "hand_set.yaml").write_text(
        "kind: measured\n"
        "source: set by hand for a test\n"
        "memory_gb: 1\n"
        "steps:\n"
        "  digits_cnn: {overhead_s: 0.01, per_sample_s: 0.001, flops_per_sample: 1.0e6}\n"
        + extra
        + "aggregate_bytes_per_s: 1.0e9\n"
    )
    return topology_with("hand_set", conf_dir)


def test_a_hand_set_measured_profile_times_training_by_batches_and_samples(tmp_path):
    # Prepare: 10 ms per step and 1 ms per sample for digits_cnn, 1 GFLOP/s for anything else.
    topology = hand_set_topology(tmp_path)

    # Execute
    work = {"samples": 100, "batch_size": 32, "epochs": 3}
    cnn = train_seconds(topology, model="digits_cnn", **work)
    mlp = train_seconds(topology, model="digits_mlp", flops=5e9, **work)

    # Assert: 3 epochs x (4 batches x 10 ms + 100 samples x 1 ms) = 0.42 s; a model without a
    # step model takes its FLOPs at 1e6 / 0.001 = 1 GFLOP/s: 5 s.
    assert cnn == pytest.approx(3 * (4 * 0.01 + 100 * 0.001))
    assert mlp == pytest.approx(5.0)


def test_a_hand_set_measured_profile_times_the_servers_evaluation_by_eval_steps(tmp_path):
    # Prepare: evaluating digits_cnn takes 2 ms per batch and 10 us per sample; training it
    # 10 ms per step; anything else runs at 1 GFLOP/s.
    eval_steps = (
        "  digits_cnn: {overhead_s: 0.002, per_sample_s: 1.0e-5, batch_sizes: [32, 128, 512]}"
    )
    hardware = hand_set_topology(tmp_path, f"eval_steps:\n{eval_steps}\n").devices[1].hardware
    evaluation = {"flops": 7e9, "samples": 1500, "batch_size": 1024, "evaluation": True}

    # Execute
    evaluated = compute_seconds(Cost(model="digits_cnn", **evaluation), hardware)
    other = compute_seconds(Cost(model="digits_mlp", **evaluation), hardware)

    # Assert: 1500 samples are two batches of 1024: 2 x 2 ms + 1500 x 10 us = 19 ms; a model
    # with no evaluation step model takes its FLOPs at 1e6 / 0.001 = 1 GFLOP/s: 7 s.
    assert hardware.eval_steps["digits_cnn"] == StepModel(overhead_s=0.002, per_sample_s=1e-5)
    assert evaluated == pytest.approx(2 * 0.002 + 1500 * 1e-5)
    assert other == pytest.approx(7.0)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--batch-sizes", "8,16"], "need >= 3 distinct batch sizes"),
        (["--batch-sizes", "8,x,16"], "not a comma-separated list of integers"),
        (["--repeats", "0"], "must be >= 1, got 0"),
        (["--statistic", "mean"], "invalid choice: 'mean'"),
        (["--out", "profile.json"], "a profile is a .yaml file"),
        (["--name", "a", "--out", "b.yaml"], "a profile is named after its file; use a.yaml"),
        (["--name", "no/slash"], "use letters, digits"),
        (["--model", "resnet"], "'resnet': not a model of the zoo"),
        (["--model", BYO_MODEL], "needs --input-size and --num-classes"),
        (
            ["--model", "no_such_pkg.Net", "--input-size", "8", "--num-classes", "2"],
            "--model: cannot import no_such_pkg.Net: no module 'no_such_pkg'",
        ),
        (["--input-size", "0"], "must be >= 1, got 0"),
    ],
)
def test_bad_arguments_exit_2_in_one_line(args, message, capsys):
    # Execute
    with pytest.raises(SystemExit) as exit_:
        main(args)

    # Assert
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert err.startswith("fedsim calibrate: error: ") and message in err
    assert err.count("\n") == 1
