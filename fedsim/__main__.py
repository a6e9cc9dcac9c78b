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

from fedsim.config import ConfigError, build_spec, conf_dir, register_configs

log = logging.getLogger("fedsim")


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
    # Hydra's own settings are Hydra's to check; a search path is kept, since the configs
    # composed may live there (an exported topology, say).
    overrides = [
        a
        for a in argv
        if not a.lstrip("+~").startswith("hydra") or a.startswith("hydra.searchpath=")
    ]
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
    """Parse, pick the runtime, run, write: the whole composition root."""
    from fedsim.pipeline import run_and_write
    from fedsim.report.console import console
    from fedsim.runtimes import runtime

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    try:
        spec = build_spec(cfg, conf_dir())
        if spec.mode.server_url:
            from fedsim.remote import run_remote

            run_remote(spec, run_dir)
        else:
            print(console(run_and_write(spec, runtime(spec.mode.name), run_dir)))
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
    "calibrate": "fedsim.calibrate",
    "export-topology": "fedsim.export_topology",
    "certs": "fedsim.certs",
}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] in SUBCOMMANDS:
        from importlib import import_module

        command = import_module(SUBCOMMANDS[sys.argv[1]])
        if sys.argv[1] == "server":
            from fedsim.pipeline import Jobs

            # The server runs the experiments posted to it as jobs through the pipeline.
            sys.exit(command.main(sys.argv[2:], runner=Jobs()))
        sys.exit(command.main(sys.argv[2:]))
    register_configs()
    _preflight(sys.argv[1:])
    _hydra_main()


if __name__ == "__main__":
    main()
