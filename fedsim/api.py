"""fedsim's Python API: run an experiment from a script or a notebook, get its result back.

:func:`run` composes the config as ``python -m fedsim`` does (Hydra's compose API over
``conf/``, the same overrides), runs it through the same pipeline and writes the same run
directory, trackers included; the :class:`Result` it returns reads that directory back as a
dict and pandas DataFrames. It needs no ``sys.argv`` and no Hydra main, and may be called any
number of times in one process. ``docs/api.md`` shows it in use.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd
from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException

from fedsim.config import ConfigError, build_spec, conf_dir, register_configs
from fedsim.spec import ExperimentSpec

Overrides = Sequence[str] | Mapping[str, Any]


@dataclass(frozen=True)
class Result:
    """A finished run, read from its run directory ``dir``.

    ``summary`` is ``summary.json``; ``rounds`` is ``runs.csv`` (one row per round of a
    federated run, per repetition and scenario of a comparison); ``events`` is ``events.csv``
    (every transfer and compute step), read when first asked for. ``spec`` is the checked
    experiment that ran.
    """

    dir: Path
    spec: ExperimentSpec

    @cached_property
    def summary(self) -> dict[str, Any]:
        import json

        data = json.loads((self.dir / "summary.json").read_text(encoding="utf-8"))
        assert isinstance(data, dict)
        return data

    @cached_property
    def rounds(self) -> pd.DataFrame:
        return pd.read_csv(self.dir / "runs.csv")

    @cached_property
    def events(self) -> pd.DataFrame:
        from fedsim.report.tables import EVENT_COLUMNS

        path = self.dir / "events.csv"
        if not path.is_file():  # a run sent to a server keeps its events there
            return pd.DataFrame(columns=list(EVENT_COLUMNS))
        return pd.read_csv(path)

    @property
    def report(self) -> Path:
        """``report.md``, the run's report (``report.html`` beside it)."""
        return self.dir / "report.md"


def run(
    overrides: Overrides | None = None,
    *,
    experiment: str | None = None,
    out_dir: str | Path | None = None,
    progress: bool = True,
    on_round: Callable[[dict[str, Any]], None] | None = None,
) -> Result:
    """Run one experiment and return its :class:`Result`.

    ``overrides`` are what ``python -m fedsim`` takes: Hydra override strings
    (``["+experiment=fl_digits", "fl.rounds=3", "topology=edge_fleet"]``), or a mapping of
    dotted keys to values (``{"fl.rounds": 3, "strategy": {"name": "median"}}``), set over the
    composed config with their Python types as they are (config groups, such as
    ``topology=edge_fleet``, are chosen with strings). ``experiment`` names one of
    ``conf/experiment/`` (the same as ``+experiment=NAME``). ``out_dir`` is the run directory
    to write, new or empty; by default the CLI's, ``results/NAME/TIMESTAMP`` under the working
    directory (``hydra.run.dir``). ``progress`` shows the progress bar; ``on_round`` gets each
    round's row as a dict as it ends (a run sent to a server, ``mode.server_url``, prints its
    rounds instead).

    Raises :class:`~fedsim.config.ConfigError` naming what is wrong when the overrides do not
    compose or the config cannot run.
    """
    from fedsim.pipeline import run_and_write
    from fedsim.runtimes import runtime
    from fedsim.scenarios import Hooks

    cfg, default_dir = compose_run(overrides, experiment=experiment)
    spec = build_spec(cfg, conf_dir())
    run_dir = Path(out_dir) if out_dir is not None else default_dir
    if run_dir.exists() and (not run_dir.is_dir() or any(run_dir.iterdir())):
        raise ConfigError(f"out_dir: {run_dir} is not a new or empty directory")
    run_dir.mkdir(parents=True, exist_ok=True)
    if spec.mode.server_url:
        from fedsim.remote import run_remote

        run_remote(spec, run_dir)
    else:
        hooks = Hooks(on_round=on_round, progress=progress)
        run_and_write(spec, runtime(spec.mode.name), run_dir, hooks)
    return Result(dir=run_dir.resolve(), spec=spec)


def compose_run(
    overrides: Overrides | None = None, *, experiment: str | None = None
) -> tuple[DictConfig, Path]:
    """The config :func:`run` runs, and the run directory Hydra's settings give it
    (``hydra.run.dir``, resolved now). Raises :class:`ConfigError` for overrides that do not
    compose."""
    strings, values = _split(overrides)
    if experiment is not None:
        strings = [f"+experiment={experiment}", *strings]
    register_configs()
    try:
        with initialize_config_dir(config_dir=str(conf_dir()), version_base=None):
            cfg = hydra_compose(config_name="config", overrides=strings, return_hydra_config=True)
    except Exception as e:  # Hydra's composition errors have no common base class
        raise ConfigError(_hydra_message(e)) from None
    for key, value in values.items():
        try:
            OmegaConf.update(cfg, key, value, merge=True)
        except OmegaConfBaseException as e:
            raise ConfigError(f"{key}: {_first_line(getattr(e, 'msg', None) or e)}") from None
    # The run directory is resolved before the Hydra node goes: it names the experiment and
    # the time. What remains is the config as the CLI's run sees it (without Hydra's own node).
    run_dir = Path(str(OmegaConf.select(cfg, "hydra.run.dir")))
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg, run_dir


def _split(overrides: Overrides | None) -> tuple[list[str], dict[str, Any]]:
    """``overrides`` as (override strings, dotted key -> value)."""
    if overrides is None:
        return [], {}
    if isinstance(overrides, Mapping):
        bad = [k for k in overrides if not isinstance(k, str) or not k]
        if bad:
            raise ConfigError(f"overrides: keys must be dotted config paths, got {bad!r}")
        return [], dict(overrides)
    if isinstance(overrides, str):
        raise ConfigError(f"overrides: a list of override strings, not one string: {overrides!r}")
    items: list[object] = list(overrides)  # annotated as strings, checked as any value
    wrong = [s for s in items if not isinstance(s, str)]
    if wrong:
        raise ConfigError(f"overrides: each must be a string such as 'fl.rounds=3', got {wrong!r}")
    return [str(s) for s in items], {}


def _first_line(value: object) -> str:
    return str(value).strip().splitlines()[0] if str(value).strip() else type(value).__name__


def _hydra_message(e: Exception) -> str:
    """Hydra's message for ``e`` on one line, without its config search path, with the cause
    (OmegaConf's, naming the key) where Hydra gives one."""
    lines: list[str] = []
    for line in str(e).strip().splitlines():
        if line.startswith("Config search path"):
            break
        if line.strip():
            lines.append(line.strip())
    text = " ".join(lines) or type(e).__name__
    cause = e.__cause__
    if cause is not None and str(cause).strip():
        text += f" ({_first_line(cause)})"
    return text
