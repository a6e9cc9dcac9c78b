"""Real-mode clusters for tests: the fl_digits experiment's config and a LocalCluster for it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from hydra import compose, initialize_config_dir

from fedsim.__main__ import conf_dir
from fedsim.config import build_topology, clients_of, register_configs
from fedsim.fl_app import _real_data
from fedsim.real.launch import LocalCluster


def config(*overrides: str):
    """``+experiment=fl_digits mode=real`` with ``overrides``, composed as the CLI would."""
    register_configs()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
        return compose(
            config_name="config", overrides=["+experiment=fl_digits", "mode=real", *overrides]
        )


def cluster_for(cfg, run_dir: Path, **kwargs: Any) -> LocalCluster:
    """A cluster of ``cfg``'s clients, each agent holding the shard run_federated would give
    it (the same seeded split), so a job over the cluster trains as the experiment does."""
    topology = build_topology(cfg)
    clients = clients_of(cfg, topology)
    rng = np.random.default_rng(np.random.SeedSequence(cfg.seed).spawn(3)[0])
    shards, _, _ = _real_data(cfg, clients, rng)
    return LocalCluster(
        run_dir=run_dir, topology=topology, clients=clients, shards=shards, mode=cfg.mode, **kwargs
    )
