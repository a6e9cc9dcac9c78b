"""The ``emulated`` runtime: the ``real`` one with the topology emulated on this host.

Each agent runs in its own network namespace behind the topology's links, shaped with tc, and
in a CPU cgroup that holds it to its profile's speed relative to one of this host's cores
(:mod:`fedsim.real.emulate`); where the kernel has no netem, each agent dials the server
through its port of a latency relay (:meth:`~fedsim.real.emulate.Emulation.route`). The server
listens in the root namespace on the address the namespaces reach. The session is then the
real runtime's (:func:`~fedsim.runtimes.real.cluster_session`): dropouts are the transport's,
outages stop and restart agent processes. What is emulated, with the slow-down factor and the
latency mechanism, is written to ``emulation.json`` in the run directory, with the host's
load, what holding each agent to its quota costs its training step (``cpu_inflation``, from
:mod:`fedsim.real.cpu_probe`, measured as the quotas take hold), and at the end of the session
how each agent fared under its CPU quota (``cpu``: the kernel's throttling counts and the
processor seconds used; ``relay_cpu_s``, the latency relay's). Everything made is removed on
exit, on Ctrl-C or SIGTERM, and after a crash at the next start; without root the runtime
refuses with one line (:class:`ConfigError`).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from fedsim.config import ConfigError
from fedsim.core.results import COMPARISON
from fedsim.real import cpu_probe, emulate
from fedsim.real.jobs import JobRunner
from fedsim.runtimes import Needs, Runtime
from fedsim.runtimes.attached import ServerSession
from fedsim.runtimes.real import cluster_session
from fedsim.spec import ExperimentSpec

log = logging.getLogger(__name__)

SUMMARY_FILE = "emulation.json"  # what was emulated and the slow-down factor, per run


@dataclass(frozen=True)
class EmulatedRuntime:
    """Emulates the topology of each session's spec on this host, then runs as ``real``."""

    runner: JobRunner | None = None  # runs jobs posted to the local server, if given
    measured = True

    def __post_init__(self) -> None:
        # Refuse before any data is prepared: a run that cannot emulate says so at once.
        try:
            emulate.check_host()
        except emulate.EmulationUnavailable as e:
            raise ConfigError(str(e)) from None

    @contextmanager
    def open(self, spec: ExperimentSpec, run_dir: Path, needs: Needs) -> Iterator[ServerSession]:
        plan = emulation_plan(spec, needs)
        log.info("emulated mode: slow-down factor %.3g", plan.factor)
        with emulate.sigterm_as_exit(), emulate.Emulation(plan) as net:
            run_dir.mkdir(parents=True, exist_ok=True)
            summary = run_dir / SUMMARY_FILE
            # The host's other work takes cores from the agents beyond their quotas: its load
            # (1-minute average) at the start and the end says how much there was.
            load = {"start": os.getloadavg()[0]}
            described = {**net.describe(), "host_load_1min": load}
            summary.write_text(json.dumps(described, indent=2) + "\n")
            mode = replace(spec.mode, host=net.server_address)
            with cluster_session(
                spec,
                run_dir,
                needs,
                runner=self.runner,
                mode=mode,
                launcher=net.launcher,
                route=net.route,
            ) as (_, session):
                # Agents start and stop unthrottled: neither is the device being emulated.
                described.update(cpu_inflation(spec, net))
                summary.write_text(json.dumps(described, indent=2) + "\n")
                try:
                    yield session
                finally:
                    load["end"] = os.getloadavg()[0]
                    described = {**described, "host_load_1min": load, "cpu": net.cpu_stats()}
                    if net.relay is not None:
                        described["relay_cpu_s"] = net.relay_cpu_s()
                    net.lift_quotas()
                    summary.write_text(json.dumps(described, indent=2) + "\n")


def cpu_inflation(spec: ExperimentSpec, net: emulate.Emulation) -> dict[str, object]:
    """Hold the agents to their quotas, measuring on the way what that costs each one's
    training step (:mod:`fedsim.real.cpu_probe`): the figures for ``emulation.json``, none
    where a probe failed (the prediction then charges no inflation, and the log says why)."""
    plan, workload = net.plan, probe_workload(spec)
    log.info("emulated mode: measuring what the quotas cost %d agents' steps", len(plan.agents))
    try:
        measured = cpu_probe.measure(
            workload,
            {d: net.launcher(d) for d in plan.agents},
            plan.quotas,
            hold=net.apply_quotas,
        )
    except cpu_probe.ProbeFailed as e:
        log.warning("emulated mode: the CPU probe failed, inflation not measured: %s", e)
        net.apply_quotas()  # the run holds its agents all the same
        return {}
    net.count_cpu_from_now()  # the probes' processor is not the agents'
    worst = max(measured.inflation.values(), default=1.0)
    log.info("emulated mode: a held agent's step costs up to %.2fx its processor alone", worst)
    described = measured.describe()
    drift = host_drift(plan, workload, measured.alone_step_s)
    if drift:
        described["host_drift"] = {str(d): x for d, x in drift.items()}
        log.info(
            "emulated mode: a step alone took %.2f-%.2fx what the quotas assumed",
            min(drift.values()),
            max(drift.values()),
        )
    return described


def host_drift(
    plan: emulate.Plan, workload: cpu_probe.Workload, alone_step_s: float
) -> dict[int, float]:
    """How many times the processor its quota assumed one step of ``workload`` takes on this
    host now (``alone_step_s``, the probe's, unthrottled), per agent whose profile has a
    measured step model of the workload's model.

    An agent's quota is its profile's worth in cores (``plan.shares``, before the slow-down
    factor) of this host's processor, so the quota assumes the host takes share x the
    profile's step for one step: what the host took when the profile was measured. A host
    that runs slower now (other tenants of the machine, another clock) holds every agent that
    much slower than its profile; spec-sheet profiles, which say nothing of this host, get no
    figure.
    """
    drift = {}
    for d in plan.agents:
        device = plan.topology.devices[d]
        step = device.hardware.steps.get(workload.model)
        if step is None:
            continue
        assumed = plan.shares[d] * step.seconds(workload.batch_size) / device.speed
        if assumed > 0:
            drift[d] = alone_step_s / assumed
    return drift


def probe_workload(spec: ExperimentSpec) -> cpu_probe.Workload:
    """The training step the run's agents take: the measured job's model, at its batch size."""
    if spec.kind == COMPARISON:
        from fedsim.scenarios.comparison import measured_workload

        workload = measured_workload(spec)
        batch_size = workload.batch_size
    else:
        workload, batch_size = spec.workload, spec.fl.batch_size
    model = workload.model
    return cpu_probe.Workload(model.name, model.input_size, model.num_classes, batch_size)


def emulation_plan(spec: ExperimentSpec, needs: Needs) -> emulate.Plan:
    """The quotas and slow-down factor of ``spec``'s agents on this host."""
    mode = spec.mode
    if mode.host_gflops is not None and not mode.host_gflops > 0:
        raise ConfigError(f"mode.host_gflops: must be > 0, got {mode.host_gflops}")
    if mode.cores is not None and not mode.cores > 0:
        raise ConfigError(f"mode.cores: must be > 0, got {mode.cores}")
    host_flops = (
        mode.host_gflops * 1e9 if mode.host_gflops is not None else emulate.measure_host_flops()
    )
    cores = mode.cores if mode.cores is not None else emulate.usable_cores()
    return emulate.plan(spec.topology, list(needs.clients), host_flops=host_flops, cores=cores)


if TYPE_CHECKING:
    # Runtime is a Protocol: nothing else makes mypy check that this class implements it.
    _checked: type[Runtime] = EmulatedRuntime
