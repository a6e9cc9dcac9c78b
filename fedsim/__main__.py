"""The ``fedsim`` command.

``python -m fedsim +experiment=NAME [key=value ...]`` runs an experiment through Hydra;
``fedsim server ...``, ``fedsim agent ...`` and the other :data:`SUBCOMMANDS` run the real
runtime's processes and fedsim's tools. ``--help`` and ``--version`` are fedsim's own; Hydra's
flags are listed by ``--hydra-help``.
"""

from __future__ import annotations

import gc
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, NoReturn

from fedsim import __version__

if TYPE_CHECKING:
    from omegaconf import DictConfig

# Hydra and fedsim.config load only for an experiment and the help, not in a subcommand's
# process: a run starts one agent per device, and each spent 0.06 s of CPU importing them.

log = logging.getLogger("fedsim")


class Subcommand(NamedTuple):
    """A command of ``fedsim``: the module whose ``main(argv)`` runs it, and one line on it."""

    module: str
    summary: str


SUBCOMMANDS = {
    "server": Subcommand(
        "fedsim.real.server.cli", "serve the REST API devices register with and jobs run on"
    ),
    "agent": Subcommand("fedsim.real.agent.cli", "run a device agent against a fedsim server"),
    "prometheus-config": Subcommand(
        "fedsim.monitor.cli", "write a prometheus.yml that monitors a server's devices"
    ),
    "grafana-dashboards": Subcommand(
        "fedsim.report.grafana_cli", "write fedsim's Grafana dashboards and provisioning"
    ),
    "k8s-manifests": Subcommand(
        "fedsim.deploy.cli", "write Kubernetes manifests for a topology's server and agents"
    ),
    "calibrate": Subcommand(
        "fedsim.calibrate", "measure this host and write a measured hardware profile"
    ),
    "export-topology": Subcommand(
        "fedsim.export_topology", "write a recorded fleet as a topology the simulator replays"
    ),
    "certs": Subcommand(
        "fedsim.certs", "create a CA and server and device certificates for mutual TLS"
    ),
}

# Config groups chosen as a whole on the command line (group=NAME), as the help lists them.
CHOSEN_GROUPS = ("mode", "privacy", "secagg", "strategy", "topology", "workload")
# Groups that a topology's devices and links name profile by profile, never as a whole.
PROFILE_KEYS = {
    "hardware": "topology.devices.N.hardware=NAME",
    "network": "topology.devices.N.link.network=NAME or topology.groups.N.uplink=NAME",
}
# Hydra flags that change where configs come from: the pre-check leaves such a run to Hydra.
CONFIG_SOURCE_FLAGS = {"-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir"}
# Hydra's run modes, of which it takes one (else a traceback: "Only one of --run, ...").
RUN_MODE_FLAGS = {
    **dict.fromkeys(("-r", "--run"), "--run"),
    **dict.fromkeys(("-m", "--multirun"), "-m"),
    **dict.fromkeys(("-c", "--cfg"), "--cfg"),
    **dict.fromkeys(("-i", "--info"), "--info"),
    **dict.fromkeys(("-sc", "--shell-completion"), "--shell-completion"),
}


def _names(group: str) -> list[str]:
    """The configs of ``group`` under fedsim's own conf/."""
    from fedsim.config import conf_dir

    return sorted(p.stem for p in (conf_dir() / group).glob("*.yaml"))


def help_text() -> str:
    """What ``fedsim --help`` prints: how to run an experiment, the configs, the commands."""
    width = max(len(name) for name in SUBCOMMANDS) + 2
    commands = "\n".join(f"  {name:<{width}}{c.summary}" for name, c in SUBCOMMANDS.items())
    groups = "\n".join(f"  {g}: {', '.join(_names(g))}" for g in CHOSEN_GROUPS)
    return f"""\
usage: fedsim +experiment=NAME [key=value ...]   run an experiment
       fedsim -m +experiment=NAME key=A,B ...   a sweep: one job per combination
       fedsim COMMAND [--help]                  one of the commands below

Run an experiment (the main job: the seed paper's Table II, simulated):
  fedsim +experiment=imagenet_yolo
It prints a summary and, as its last line, "results: DIR": summary.json, runs.csv,
events.csv, report.md and plots/. mode=real runs it with real server and agent processes.

experiments (+experiment=NAME): {", ".join(_names("experiment"))}
config groups (group=NAME):
{groups}
any value of the config can be overridden: key=value (see it with --cfg job)

commands:
{commands}

options:
  -h, --help     this help; fedsim COMMAND --help for a command's own
  --version      fedsim's version
  --cfg job      print the composed config instead of running it
  --hydra-help   Hydra's own flags (--cfg, --info, --multirun, --config-dir, ...)"""


def _options(group: str, searchpath: list[str]) -> list[str]:
    """The configs of ``group`` Hydra finds, fedsim's own and those on ``searchpath``."""
    from hydra.core.global_hydra import GlobalHydra

    loader = GlobalHydra.instance().config_loader()
    return sorted(loader.get_group_options(group, config_name="config", overrides=searchpath))


def _check_choices(argv: list[str], options: Callable[[str], list[str]]) -> None:
    """Exit in one line on a group chosen by a name it does not have, or the wrong way."""
    for arg in argv:
        key, eq, value = arg.partition("=")
        group = key.lstrip("+~")
        if not eq or "(" in value or group.startswith("hydra"):
            continue  # not an override, or a sweep function (range, choice...) left to Hydra
        if key == "experiment":
            sys.exit(f"error: experiment is added, not overridden: use +experiment={value}")
        known = options(group) if "." not in group and "@" not in group else []
        if not known:
            continue
        if group in PROFILE_KEYS:
            sys.exit(
                f"error: {group} profiles are named per device, not chosen as a whole: "
                f"{PROFILE_KEYS[group]} (available: {', '.join(known)})"
            )
        for name in value.split(","):
            if name and name not in known:
                sys.exit(f"error: unknown {group} {name!r} (available: {', '.join(known)})")


def _source_flags(argv: list[str]) -> list[tuple[str, str]]:
    """The flags of ``argv`` that change where configs come from, with their values (given
    as ``--config-dir DIR`` or ``--config-dir=DIR``)."""
    found = []
    for i, arg in enumerate(argv):
        flag, eq, value = arg.partition("=")
        if flag in CONFIG_SOURCE_FLAGS:
            if not eq:
                value = argv[i + 1] if i + 1 < len(argv) else ""
            found.append((flag, value))
    return found


def _preflight(argv: list[str]) -> None:
    """Report a config that cannot compose in one line, before Hydra prints its longer message."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import MissingConfigException

    from fedsim.config import conf_dir

    modes = sorted({RUN_MODE_FLAGS[a] for a in argv if a in RUN_MODE_FLAGS})
    if len(modes) > 1:
        sys.exit(f"error: {' and '.join(modes)} do not go together: pass one of them")
    sources = _source_flags(argv)
    if sources:
        for flag, value in sources:
            if flag in ("-cd", "--config-dir") and not Path(value).is_dir():
                sys.exit(f"error: {flag}: no directory {value!r}")
        return  # configs from elsewhere: Hydra's to find and check
    if argv and "=" not in argv[0] and not argv[0].startswith(("-", "+", "~")):
        sys.exit(
            f"error: unknown command {argv[0]!r} (commands: {', '.join(SUBCOMMANDS)}); "
            "run an experiment with +experiment=NAME, see fedsim --help"
        )
    # A search path is kept, since the configs composed may live there (an exported topology,
    # a user's experiment); Hydra's other settings are Hydra's to check.
    searchpath = [a for a in argv if a.lstrip("+~").startswith("hydra.searchpath=")]
    sweep = any(a in ("-m", "--multirun") or a.startswith("-") for a in argv)
    overrides = [a for a in argv if not a.lstrip("+~").startswith("hydra")] + searchpath
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
            _check_choices(argv, lambda group: _options(group, searchpath))
            if not sweep:  # sweeps and Hydra's own flags are Hydra's to check
                compose(config_name="config", overrides=overrides)
    except MissingConfigException as e:
        group, _, name = str(e.missing_cfg_file).rpartition("/")
        known = ", ".join(sorted(e.options or []))
        sys.exit(f"error: unknown {group or 'config'} {name!r} (available: {known})")
    except Exception as e:  # any other composition failure is reported the same way
        cause = e.__cause__
        detail = str(e).strip().splitlines()[0]
        if cause is not None and str(cause).strip():
            detail += " " + str(cause).strip().splitlines()[0]
        sys.exit(f"error: {detail}")


def _hydra_main(cfg: DictConfig) -> None:
    """Parse, pick the runtime, run, write: the whole composition root."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from fedsim.config import ConfigError, build_spec, conf_dir
    from fedsim.pipeline import run_and_write
    from fedsim.report.console import console
    from fedsim.runtimes import runtime
    from fedsim.scenarios import Hooks

    hydra_config = HydraConfig.get()
    run_dir = Path(hydra_config.runtime.output_dir)
    # A sweep's jobs run side by side (joblib): their progress bars would share one terminal
    # line, so each job prints its outcome in one piece when it ends instead.
    sweep = hydra_config.mode == RunMode.MULTIRUN
    try:
        spec = build_spec(cfg, conf_dir())
        if spec.mode.server_url:
            from fedsim.remote import run_remote

            result = run_remote(spec, run_dir, progress=not sweep)
        else:
            rt = runtime(spec.mode.name)
            result = run_and_write(spec, rt, run_dir, Hooks(progress=not sweep))
    except ConfigError as e:
        log.debug("configuration error", exc_info=True)
        sys.exit(f"error: {e}")
    heading = ""
    if sweep:
        job = hydra_config.job
        heading = f"job {job.num} ({job.override_dirname or 'no overrides'}):\n"
    print(f"{heading}{console(result)}\nresults: {run_dir}", flush=True)


def main() -> None:
    args = sys.argv[1:]
    if args and args[0] in SUBCOMMANDS:
        from importlib import import_module

        command = import_module(SUBCOMMANDS[args[0]].module)
        if args[0] == "server":
            from fedsim.pipeline import Jobs

            # The server runs the experiments posted to it as jobs through the pipeline.
            _exit(command.main(args[1:], runner=Jobs()))
        _exit(command.main(args[1:]))
    # Hydra answers these two with its own application help and its own version.
    if "-h" in args or "--help" in args:
        try:
            print(help_text(), flush=True)
        except BrokenPipeError:
            # `fedsim --help | head`: the reader left; say nothing more, as a pager would.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return
    if "--version" in args:
        print(f"fedsim {__version__}")
        return
    import hydra

    from fedsim.config import conf_dir, register_configs

    register_configs()
    _preflight(args)
    hydra.main(version_base=None, config_path=str(conf_dir()), config_name="config")(_hydra_main)()
    _exit(0)


def _exit(status: int) -> NoReturn:
    """Exit with ``status``, the objects still alive kept from the collection at exit: with
    torch loaded they number about 200,000, and walking them made an agent take 0.9 s from
    SIGTERM to exit (0.1 s without) and an experiment 0.67 s after its last line (0.13 s);
    the OS reclaims the memory either way."""
    gc.freeze()
    sys.exit(status)


if __name__ == "__main__":
    main()
