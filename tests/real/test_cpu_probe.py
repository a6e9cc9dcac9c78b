"""The emulation's CPU probe (fedsim.real.cpu_probe), run here without cgroups: the probes
start with an empty launcher prefix, so what is checked is the protocol and the figures, not
a quota (tests/real/test_emulated.py runs it under quotas, as root)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from fedsim.real import cpu_probe

DIGITS = cpu_probe.Workload("digits_cnn", input_size=8, num_classes=10, batch_size=32)


def test_a_probe_times_its_steps_only_when_told_to_go():
    # Prepare: a probe of three steps.
    proc = subprocess.Popen(
        DIGITS.command(3), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdin is not None
    try:
        # Execute: wait for it to be ready; it then waits for a line.
        ready = proc.stdout.readline().strip()
        waiting = proc.poll() is None
        answer, _ = proc.communicate("go\n", timeout=60)
    finally:
        proc.kill()
    # Assert: ready, held until told, then one figure: the processor per step.
    assert ready == cpu_probe.READY and waiting
    figure = json.loads(answer)["cpu_per_step_s"]
    assert 0 < figure < 1


def test_measure_times_one_probe_alone_then_every_agent_after_holding_them():
    # Prepare: two "agents" started with no prefix; hold() records when it is called.
    held: list[str] = []
    quotas = {3: 0.1, 8: 0.5}

    # Execute
    measured = cpu_probe.measure(DIGITS, {3: [], 8: []}, quotas, hold=lambda: held.append("x"))

    # Assert: held once; figures per device; steps sized to about a second at each quota.
    assert held == ["x"]
    assert measured.alone_step_s > 0 and set(measured.step_s) == {3, 8}
    assert measured.steps == {
        d: cpu_probe.steps_for(q, measured.alone_step_s) for d, q in quotas.items()
    }
    assert measured.steps[8] > measured.steps[3] >= cpu_probe.MIN_STEPS
    assert measured.inflation == {d: s / measured.alone_step_s for d, s in measured.step_s.items()}
    described = measured.describe()
    assert set(described["cpu_inflation"]) == {"3", "8"}
    assert described["cpu_probe"]["steps"] == {"3": measured.steps[3], "8": measured.steps[8]}


def test_a_probe_that_fails_names_its_device_and_leaves_nothing_running():
    # Prepare: device 4's "launcher" runs a command that exits at once.
    bad = [sys.executable, "-c", "import sys; sys.exit('no torch here')", "--"]
    # Execute / Assert
    with pytest.raises(cpu_probe.ProbeFailed, match="device 4 did not start: no torch here"):
        cpu_probe.measure(DIGITS, {3: [], 4: bad}, {3: 0.5, 4: 0.5}, hold=lambda: None)


def test_steps_fill_about_the_wall_time_at_the_quota():
    assert cpu_probe.steps_for(0.5, 0.001, wall_s=1.0) == 500
    assert cpu_probe.steps_for(0.01, 0.001, wall_s=1.0) == 10
    assert cpu_probe.steps_for(0.001, 0.01, wall_s=1.0) == cpu_probe.MIN_STEPS
