"""The ``fedsim`` command.

``python -m fedsim +experiment=NAME [key=value ...]`` runs an experiment through Hydra;
``fedsim server ...`` and ``fedsim agent ...`` run the real runtime's processes.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import hydra
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from fedsim.config import ConfigError, register_configs

log = logging.getLogger("fedsim")


def conf_dir() -> Path:
    """The Hydra configs: ``conf/`` of the clone, reached through the ``fedsim/conf`` link.

    In a wheel the link is a real directory, so an installed fedsim finds the same files.
    """
    return Path(__file__).resolve().parent / "conf"


def _preflight(argv: list[str]) -> None:
    """Report a config that cannot compose in one line, before Hydra prints its longer message."""
    experiments = sorted(p.stem for p in (conf_dir() / "experiment").glob("*.yaml"))
    for arg in argv:
        key, _, value = arg.partition("=")
        named = key.lstrip("+~") == "experiment" and value and "," not in value
        if named and value not in experiments:
            known = ", ".join(experiments)
            sys.exit(f"error: unknown experiment {value!r} (available: {known})")
    if any(a in ("-m", "--multirun") or a.startswith("-") for a in argv):
        return  # sweeps and Hydra's own flags are Hydra's to check
    overrides = [a for a in argv if not a.lstrip("+~").startswith("hydra")]
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
            compose(config_name="config", overrides=overrides)
    except Exception as e:  # any composition failure is reported the same way
        cause = e.__cause__
        detail = str(e).strip().splitlines()[0]
        if cause is not None and str(cause).strip():
            detail += " " + str(cause).strip().splitlines()[0]
        sys.exit(f"error: {detail}")


@hydra.main(version_base=None, config_path=str(conf_dir()), config_name="config")
def _hydra_main(cfg: DictConfig) -> None:
    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        kind = cfg.experiment.kind
        if cfg.mode.name == "real" and cfg.mode.server_url:
            from fedsim.real.remote import run_remote

            if kind != "federated":
                raise ConfigError("mode.server_url: a running server runs federated jobs only")
            run_remote(cfg, run_dir)
            print(f"results: {run_dir}")
            return
        if kind == "federated":
            from fedsim.fl_app import run_federated as run
        elif kind == "comparison":
            from fedsim.app import run_experiment as run
        else:
            raise ConfigError(f"experiment.kind: {kind!r} is not one of comparison, federated")
        run(cfg, run_dir, conf_dir())
    except ConfigError as e:
        log.debug("configuration error", exc_info=True)
        sys.exit(f"error: {e}")
    print(f"results: {run_dir}")


SUBCOMMANDS = {
    "server": "fedsim.real.server.cli",
    "agent": "fedsim.real.agent.cli",
    "prometheus-config": "fedsim.monitor.cli",
    "grafana-dashboards": "fedsim.report.grafana_cli",
    "k8s-manifests": "fedsim.deploy.cli",
}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in SUBCOMMANDS:
        from importlib import import_module

        command = import_module(SUBCOMMANDS[sys.argv[1]])
        sys.exit(command.main(sys.argv[2:]))
    register_configs()
    _preflight(sys.argv[1:])
    _hydra_main()


if __name__ == "__main__":
    main()
