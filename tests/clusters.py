"""Real-mode clusters for tests: the fl_digits experiment's config and a LocalCluster for it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np

from fedsim.config import build_spec, compose, conf_dir
from fedsim.core.results import RunResult
from fedsim.core.topology import Topology
from fedsim.ml.data import load_digits_split
from fedsim.pipeline import Jobs, run_and_write
from fedsim.real.launch import LocalCluster
from fedsim.runtimes import runtime
from fedsim.scenarios import Hooks
from fedsim.scenarios.federated import real_data


def config(*overrides: str):
    """``+experiment=fl_digits mode=real`` with ``overrides``, composed as the CLI would."""
    return compose(["+experiment=fl_digits", "mode=real", *overrides])


def cluster_for(cfg, run_dir: Path, **kwargs: Any) -> LocalCluster:
    """A cluster of ``cfg``'s clients, each agent holding the shard the federated scenario
    would give it (the same seeded split), so a job over the cluster trains as the experiment
    does. Its server runs posted jobs through the pipeline."""
    spec = build_spec(cfg, conf_dir())
    rng = np.random.default_rng(np.random.SeedSequence(spec.seed).spawn(3)[0])
    shards, _, _ = real_data(spec, rng)
    kwargs.setdefault("runner", Jobs())
    return LocalCluster(
        run_dir=run_dir,
        topology=spec.topology,
        clients=list(spec.clients),
        shards=shards,
        mode=spec.mode,
        **kwargs,
    )


def run_over(
    cluster: LocalCluster,
    cfg,
    run_dir: Path,
    on_round: Callable[[dict[str, Any]], None] | None = None,
) -> RunResult:
    """Run ``cfg`` over the running ``cluster`` (the attached runtime) and write it."""
    assert cluster.stores is not None
    rt = runtime("attached", stores=cluster.stores)
    hooks = Hooks(on_round=on_round, progress=False)
    return run_and_write(build_spec(cfg, conf_dir()), rt, run_dir, hooks)


def digits_cluster(run_dir: Path, topology: Topology, clients: Sequence[int]) -> LocalCluster:
    """A cluster of ``clients`` on loopback, each agent holding an equal share of 480 digits
    (a seeded draw), with short heartbeats: for tests that drive rounds themselves."""
    X, y, _, _ = load_digits_split(test_fraction=0.2, seed=0)
    parts = np.array_split(np.random.default_rng(0).permutation(len(y))[:480], len(clients))
    mode = SimpleNamespace(
        host="127.0.0.1",
        port=0,
        startup_timeout_s=120,
        heartbeat_interval_s=0.5,
        patience_s=5,
        tls="off",
    )
    return LocalCluster(
        run_dir=run_dir,
        topology=topology,
        clients=list(clients),
        shards={d: (X[idx], y[idx]) for d, idx in zip(clients, parts, strict=True)},
        mode=mode,
    )
