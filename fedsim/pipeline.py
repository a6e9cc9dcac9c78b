"""One pipeline: a typed experiment spec -> a runtime -> the scenario's run -> one result.

``python -m fedsim`` (the composition root in :mod:`fedsim.__main__`), the jobs a server runs
(:class:`Jobs`, handed to ``fedsim server``) and the tests all run experiments through
:func:`run` and write them with :func:`fedsim.report.write.write_run`. A run over a measured
runtime is simulated again (:func:`predict`), so that its result says how far the simulator's
prediction of it is.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedsim.config import ConfigError, build_spec, compose_job, conf_dir
from fedsim.core import fidelity
from fedsim.core.results import COMPARISON, TIME_FIELDS, RunResult
from fedsim.core.topology import CpuQuota, map_profiles, with_cpu_quotas, with_speeds_scaled
from fedsim.runtimes import Runtime, runtime
from fedsim.scenarios import Hooks, scenario
from fedsim.spec import ExperimentSpec

if TYPE_CHECKING:  # the server's stores (aiohttp's side): a run in the simulator needs none
    from fedsim.real.stores import ServerStores

log = logging.getLogger(__name__)


def run(spec: ExperimentSpec, rt: Runtime, run_dir: Path, hooks: Hooks | None = None) -> RunResult:
    """Run ``spec`` over ``rt``; what the run keeps (repository, agents' logs) goes in
    ``run_dir``. A measured run comes with its prediction (:func:`predict`). The result is not
    written: see :func:`run_and_write`."""
    result = scenario(spec.kind)(spec, rt, Path(run_dir), hooks or Hooks())
    if spec.mode.name == "emulated":
        result = _with_emulation(result, Path(run_dir))
    result = with_attack_baselines(spec, result)
    return predict(spec, result) if rt.measured else result


FEDAVG: Mapping[str, Any] = {"name": "fedavg"}


def with_attack_baselines(spec: ExperimentSpec, result: RunResult) -> RunResult:
    """``result`` of a run under attack (``fl.attack``) with what the attack cost: the final
    accuracy of the same run simulated without it, and, where the run's rule is not FedAvg,
    of FedAvg with and without it (``summary["attack"]["baselines"]``: rule -> {"attacked",
    "clean", "drop_points"}). Each is the same spec and seed in the simulator; nothing of them
    is kept. Runs without an attack, without real training or with ``baselines`` off are
    returned as they are."""
    attack = spec.fl.attack
    summary = result.summary
    if (
        attack.kind is None
        or not attack.baselines
        or spec.fl.training != "real"
        or "attack" not in summary
    ):
        return result
    rule = str(spec.strategy.get("name", "?"))
    clean_fl = replace(spec.fl, attack=replace(attack, kind=None))
    runs: dict[str, dict[str, Any]] = {rule: {"attacked": summary.get("final_accuracy")}}
    plans = [(rule, "clean", replace(spec, fl=clean_fl))]
    if rule != FEDAVG["name"]:
        runs[FEDAVG["name"]] = {}
        plans += [
            (FEDAVG["name"], "attacked", replace(spec, strategy=FEDAVG)),
            (FEDAVG["name"], "clean", replace(spec, strategy=FEDAVG, fl=clean_fl)),
        ]
    for name, which, twin in plans:
        log.info("simulating the run with %s, %s, for the attack's baselines", name, which)
        twin = replace(twin, mode=replace(twin.mode, name="sim"))
        with tempfile.TemporaryDirectory(prefix="fedsim-baseline-") as tmp:
            done = scenario(twin.kind)(twin, runtime("sim"), Path(tmp), Hooks(progress=False))
        runs[name][which] = done.summary.get("final_accuracy")
    for figures in runs.values():
        attacked, clean = figures.get("attacked"), figures.get("clean")
        figures["drop_points"] = (
            None if attacked is None or clean is None else 100.0 * (clean - attacked)
        )
    return replace(result, summary={**summary, "attack": {**summary["attack"], "baselines": runs}})


def _with_emulation(result: RunResult, run_dir: Path) -> RunResult:
    """``result`` with what an emulated runtime recorded of itself (``emulation.json``): the
    slow-down factor it ran at, in the summary and the report's assumptions."""
    from fedsim.runtimes.emulated import SUMMARY_FILE

    path = run_dir / SUMMARY_FILE
    if not path.is_file():
        return result
    described = json.loads(path.read_text(encoding="utf-8"))
    factor = float(described.get("slowdown_factor", 1.0))
    note = (
        f"mode=emulated ran every device {factor:.3g} times slower than its profile, links "
        "included (this host cannot run the fastest profile at full speed); measured times "
        "are of the slowed run, and the fidelity section compares them with the prediction "
        "scaled by the same factor."
        if factor > 1
        else "mode=emulated ran every device at its profile's speed on this host."
    )
    if described.get("latency_mechanism") == "relay":
        note += (
            " This kernel has no netem: tc shaped the link rates, and a relay held the bytes of "
            "each request and response to and from the server for the path's one-way latency; "
            "loss and jitter were not emulated."
        )
    elif described.get("latency_mechanism") == "none":
        note += (
            " This kernel has no netem, and every path is faster than the relay's threshold "
            "one way: tc shaped the link rates; latency, loss and jitter were not emulated, "
            "and the prediction leaves them out."
        )
    elif not described.get("latency_and_loss_emulated", True):
        note += " This kernel has no netem: link latency and loss were not emulated, rates were."
    inflation = described.get("cpu_inflation") or {}
    if inflation:
        note += (
            f" Held to their CPU quotas on this host, the agents' training steps cost "
            f"{_span(inflation.values())} times the processor they cost a process alone (a "
            "probe per agent as the quotas took hold); the prediction charges each agent its "
            "own."
        )
    drift = described.get("host_drift") or {}
    if drift:
        note += (
            f" A training step alone took this host {_span(drift.values())} times the "
            "processor that the measured profiles (and so the quotas) assumed; the prediction "
            "charges that too."
        )
    return replace(
        result,
        summary={**result.summary, "emulation": described},
        assumptions=[*result.assumptions, note],
    )


def _span(values: Iterable[float]) -> str:
    """The least and the greatest of ``values``, to two decimals ("1.10-1.25", or "1.10")."""
    ordered = sorted(values)
    low, high = f"{ordered[0]:.2f}", f"{ordered[-1]:.2f}"
    return low if low == high else f"{low}-{high}"


def predict(spec: ExperimentSpec, measured: RunResult) -> RunResult:
    """``measured`` with the simulator's prediction of it: ``spec`` (same seed, clients, faults,
    strategy and profiles) run in the simulator, its rows paired with the measured ones
    (``fidelity``) and their error statistics in the summary (``summary["fidelity"]``).

    The simulation keeps nothing: it runs in a temporary directory, without a progress bar. A
    comparison measured a scaled job (``workload.scale``); the simulator predicts that job and
    leaves out the crossover grid, which the measured run has already.
    """
    sim_spec = prediction_spec(spec, measured.summary.get("emulation"))
    if spec.kind == COMPARISON:
        from fedsim.scenarios.comparison import measured_workload

        sim_spec = replace(sim_spec, workload=measured_workload(spec), scale=None, crossover=None)
    log.info("simulating the measured run to predict it")
    with tempfile.TemporaryDirectory(prefix="fedsim-prediction-") as tmp:
        predicted = scenario(spec.kind)(sim_spec, runtime("sim"), Path(tmp), Hooks(progress=False))
    factor = float(measured.summary.get("emulation", {}).get("slowdown_factor", 1.0))
    if factor != 1.0:
        # The emulation ran everything `factor` times slower: so is the prediction compared.
        slowed: Any = [
            replace(r, **{k: getattr(r, k) * factor for k in TIME_FIELDS if k != "bytes_moved"})
            for r in predicted.rows
        ]
        predicted = replace(predicted, rows=slowed)
    if spec.kind == COMPARISON:
        records = fidelity.pair_repetitions(predicted.rows, measured.rows)  # type: ignore[arg-type]
    else:
        records = fidelity.pair_rounds(predicted.rows, measured.rows)  # type: ignore[arg-type]
    profiles = fidelity.profile_kinds(spec.topology, (spec.topology.server, *spec.clients))
    block = fidelity.summary(records, profiles)
    return replace(measured, summary={**measured.summary, "fidelity": block}, fidelity=records)


def prediction_spec(spec: ExperimentSpec, emulation: Mapping[str, Any] | None) -> ExperimentSpec:
    """``spec`` in the simulator, as the measured run ran it, its latency paid per request
    and response as the agents' protocol pays it (``mode.polling``): where an emulation could not
    emulate link latency and loss (``latency_and_loss_emulated`` false in its description), its
    links had neither, and the prediction of that run leaves them out too; where a relay
    emulated the latency instead (``latency_mechanism`` "relay"), only the loss and jitter,
    which the relay does not emulate, are left out. Where it held its
    agents to CFS quotas (``cpu_quota_cores`` and ``cpu_period_s``, each by device id), the
    simulated devices are held to the same (``Device.cpu_quota``), each period divided by the
    slow-down factor, since the prediction is simulated at the profiles' speed and slowed
    afterwards, and share the host's whole ``cores`` as the agents did; each computes slower
    by what the emulation measured its quota to cost its training step (``cpu_inflation``) and
    by how much slower than its measured profile said the host ran that step alone as the
    quotas took hold (``host_drift``)."""
    # The agents poll for tasks and request downloads: latency is paid as they pay it.
    sim_spec = replace(spec, mode=replace(spec.mode, name="sim", polling=True))
    quotas = (emulation or {}).get("cpu_quota_cores") or {}
    period = (emulation or {}).get("cpu_period_s")
    if quotas and period:
        factor = float((emulation or {}).get("slowdown_factor", 1.0))
        host = (emulation or {}).get("cores")
        host_cores = None if host is None else max(1, math.floor(float(host)))
        held = {
            int(dev): CpuQuota(
                cores=float(cores), period_s=float(period[dev]) / factor, host_cores=host_cores
            )
            for dev, cores in quotas.items()
        }
        # What the quota costs each held agent's work on the emulating host (its probe's
        # processor per step against a probe alone): the device computes that much slower.
        # And what the host took for a step alone against what the quotas assumed of it
        # (``host_drift``: it ran slower, or faster, than when the profiles were measured).
        inflation = (emulation or {}).get("cpu_inflation") or {}
        drift = (emulation or {}).get("host_drift") or {}
        slower = {
            int(dev): 1 / (float(x) * float(drift.get(dev, 1.0))) for dev, x in inflation.items()
        }
        topology = with_speeds_scaled(with_cpu_quotas(sim_spec.topology, held), slower)
        sim_spec = replace(sim_spec, topology=topology)
    if emulation is not None and not emulation.get("latency_and_loss_emulated", True):
        if emulation.get("latency_mechanism") == "relay":
            # tc's rates and the relay's fixed delays stay.
            emulated = map_profiles(
                sim_spec.topology, link=lambda p: replace(p, latency_jitter=0.0, loss=0.0)
            )
        else:  # Only what tc could shape stays: the rates.
            emulated = map_profiles(
                sim_spec.topology,
                link=lambda p: replace(p, latency=0.0, latency_jitter=0.0, loss=0.0),
            )
        sim_spec = replace(sim_spec, topology=emulated)
    return sim_spec


def report_plots(spec: ExperimentSpec) -> bool:
    """Whether the run's directory gets its plots (``report.plots``, on by default)."""
    return bool(spec.config.get("report", {}).get("plots", True))


def run_and_write(
    spec: ExperimentSpec,
    rt: Runtime,
    run_dir: Path,
    hooks: Hooks | None = None,
    *,
    track: bool = True,
) -> RunResult:
    """:func:`run`, then the run directory's files, then the trackers the config asks for
    (``tracking``, :mod:`fedsim.tracking`; ``track`` false: none)."""
    from fedsim.report.write import write_run
    from fedsim.tracking import log_run, trackers

    found = trackers(spec.config) if track else []  # a missing package fails before the run
    started = time.perf_counter()
    result = run(spec, rt, run_dir, hooks)
    wall_time_s = time.perf_counter() - started
    write_run(Path(run_dir), result, plots=report_plots(spec))
    log_run(found, spec.config, Path(run_dir), wall_time_s=wall_time_s)
    return result


@dataclass(frozen=True)
class _Job:
    spec: ExperimentSpec

    @property
    def model(self) -> str:
        return self.spec.workload.model.name

    @property
    def rounds(self) -> int:
        return self.spec.fl.rounds

    def run(
        self,
        run_dir: Path,
        stores: ServerStores,
        *,
        channel: str,
        on_round: Callable[[dict[str, Any]], None],
    ) -> None:
        rt = runtime("attached", stores=stores, channel=channel)
        # The job's config may carry its poster's tracking settings: paths on another host,
        # which the server does not write to.
        hooks = Hooks(on_round=on_round, progress=False)
        run_and_write(self.spec, rt, run_dir, hooks, track=False)


class Jobs:
    """The job runner ``fedsim server`` is handed: a job is an experiment config, checked
    against the CLI's schema and run over the server's own stores (the ``attached`` runtime)."""

    kinds = ("federated",)

    def prepare(self, kind: str, config: Mapping[str, Any]) -> _Job:
        spec = build_spec(compose_job(config), conf_dir())
        if spec.kind != kind:
            raise ConfigError(f"kind: the config's experiment.kind is {spec.kind!r}, not {kind!r}")
        if spec.faults.outages:
            raise ConfigError(
                "faults.outages: a running server cannot stop its devices' agents; "
                "run the experiment with mode=real on one host to inject outages"
            )
        return _Job(spec)
