"""Experiment tracking: a written run directory logged to MLflow and TensorBoard.

``tracking.mlflow.uri`` and ``tracking.tensorboard.dir`` (:class:`fedsim.schema.TrackingConf`)
turn each on. :func:`trackers` checks the settings and that the packages are installed (the
``tracking`` extra) before a run starts; after the run directory is written,
:func:`log_run` hands what it holds to each tracker: the config as parameters, the rows of
``runs.csv`` as metrics per round (per repetition for a comparison), the summary's figures
(simulated time among them) and the run's wall-clock time, and the report and plots as
artifacts. Both stores are local files; no server is needed.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib.util import find_spec
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pandas as pd

from fedsim.config import ConfigError
from fedsim.schema import MlflowConf, TensorBoardConf, TrackingConf

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

INSTALL_HINT = "pip install 'fedsim-testbed[tracking]'"
# The files of a run directory each store keeps (besides plots/ and the config).
ARTIFACTS = ("report.md", "report.html", "summary.json", "runs.csv")
# runs.csv's columns logged per round of a federated run, and the names they are logged as.
ROUND_METRICS = {
    "accuracy": "accuracy",
    "eval_loss": "eval_loss",
    "train_loss": "train_loss",
    "total_s": "time_s",
    "transfer_s": "transfer_s",
    "compute_s": "compute_s",
    "aggregation_s": "aggregation_s",
    "waiting_s": "waiting_s",
    "finished_s": "clock_s",
    "bytes_moved": "bytes_moved",
    "completed": "completed",
    "failed": "failed",
}
# A comparison's rows: one repetition of one scenario each.
REPETITION_METRICS = ("total_s", "transfer_s", "compute_s", "aggregation_s", "waiting_s")
# Numbers of the summary that name something rather than measure it (they are params).
NOT_FIGURES = ("seed", "server")


@dataclass(frozen=True)
class Point:
    """One value of a metric: ``tag`` at ``step`` (a round, a repetition, 0 for the run)."""

    tag: str
    step: int
    value: float


@dataclass(frozen=True)
class TrackedRun:
    """What a tracker logs of one run, read from its written directory."""

    name: str  # in the stores: the run directory's name (a sweep's job: SWEEP/NUMBER)
    experiment: str
    run_dir: Path
    config: Mapping[str, Any]
    params: dict[str, str]
    series: list[Point]  # per round or repetition
    figures: dict[str, float]  # per run: the summary's numbers and the wall-clock time


class Tracker(Protocol):
    """A store a run is logged to."""

    def log(self, run: TrackedRun) -> None: ...


def settings(config: Mapping[str, Any]) -> TrackingConf:
    """The ``tracking`` section of a resolved config (plain data), typed."""
    section = config.get("tracking") or {}
    return TrackingConf(
        mlflow=MlflowConf(**(section.get("mlflow") or {})),
        tensorboard=TensorBoardConf(**(section.get("tensorboard") or {})),
    )


def trackers(config: Mapping[str, Any]) -> list[Tracker]:
    """The trackers ``config`` asks for (none by default). Raises :class:`ConfigError` naming
    the setting, and the extra to install when a package it needs is missing or why MLflow
    cannot open the store, so that a run fails before it starts, not after."""
    conf = settings(config)
    wanted: list[tuple[str, str, str]] = []  # (setting, package, module)
    if conf.mlflow.uri is not None:
        wanted.append(("tracking.mlflow.uri", "MLflow (mlflow-skinny)", "mlflow"))
    if conf.tensorboard.dir is not None:
        wanted.append(("tracking.tensorboard.dir", "TensorBoard", "tensorboard"))
    missing = [(where, package) for where, package, module in wanted if find_spec(module) is None]
    if missing:
        where = ", ".join(w for w, _ in missing)
        packages = " and ".join(p for _, p in missing)
        raise ConfigError(f"{where}: {packages} not installed; {INSTALL_HINT}")
    found: list[Tracker] = []
    if conf.mlflow.uri is not None:
        if not conf.mlflow.uri.strip():
            raise ConfigError("tracking.mlflow.uri: is empty; give a directory or a tracking URI")
        mlflow = MlflowTracker(mlflow_uri(conf.mlflow.uri), conf.mlflow.experiment)
        mlflow.check()
        found.append(mlflow)
    if conf.tensorboard.dir is not None:
        if not conf.tensorboard.dir.strip():
            raise ConfigError("tracking.tensorboard.dir: is empty; give a directory")
        found.append(TensorBoardTracker(Path(conf.tensorboard.dir)))
    return found


def mlflow_uri(value: str) -> str:
    """A tracking URI as given (``file:``, ``sqlite:``, ``http:``...), or a directory as the
    ``file:`` URI of its absolute path (relative to the working directory)."""
    if ":" in value and not Path(value).exists() and value.split(":", 1)[0].isidentifier():
        return value
    return Path(value).expanduser().resolve().as_uri()


def log_run(
    found: Sequence[Tracker],
    config: Mapping[str, Any],
    run_dir: Path,
    *,
    wall_time_s: float | None = None,
) -> None:
    """Log the written run directory ``run_dir`` of the run ``config`` describes to each of
    ``found``; ``wall_time_s`` is how long the run took on this host's clock."""
    if not found:
        return
    run = tracked_run(config, Path(run_dir), wall_time_s)
    for tracker in found:
        tracker.log(run)


def tracked_run(config: Mapping[str, Any], run_dir: Path, wall_time_s: float | None) -> TrackedRun:
    """What the trackers log of ``run_dir``, read from its files."""
    summary = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    rows = pd.read_csv(run_dir / "runs.csv")
    figures = {
        k: float(v)
        for k, v in summary.items()
        if isinstance(v, (int, float))
        and not isinstance(v, bool)
        and math.isfinite(v)
        and k not in NOT_FIGURES
    }
    if wall_time_s is not None:
        # Not "wall_time_s": a measured run's summary already names its duration so.
        figures["process_time_s"] = wall_time_s
    experiment = config.get("experiment") or {}
    # A sweep's job is named by its number (hydra.sweep.subdir): its sweep's directory
    # tells one sweep's job 0 from another's.
    name = f"{run_dir.parent.name}/{run_dir.name}" if run_dir.name.isdigit() else run_dir.name
    return TrackedRun(
        name=name,
        experiment=str(experiment.get("name", "fedsim")),
        run_dir=run_dir.resolve(),
        config=config,
        params=flat_params(config),
        series=series(rows),
        figures=figures,
    )


def flat_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """``config`` as dotted keys (``fl.rounds``) and text values: strings as they are, other
    values (lists included) as JSON, the way an override would spell them."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flat_params(value, name + "."))
        else:
            out[name] = value if isinstance(value, str) else json.dumps(value)
    return out


def series(rows: pd.DataFrame) -> list[Point]:
    """The metrics of ``runs.csv``: per round (``round/accuracy``...) for a federated run, per
    repetition and scenario (``client_based/total_s``...) for a comparison. Empty cells (a
    round without evaluation) are left out."""
    points: list[Point] = []
    if "round" in rows.columns:
        for column, name in ROUND_METRICS.items():
            if column in rows.columns:
                points += _column(rows, column, f"round/{name}", "round")
    else:
        for scenario, part in rows.groupby("scenario", sort=True):
            for column in REPETITION_METRICS:
                points += _column(part, column, f"{scenario}/{column}", "repetition")
    return points


def _column(rows: pd.DataFrame, column: str, tag: str, step: str) -> list[Point]:
    values = pd.to_numeric(rows[column], errors="coerce")
    return [
        Point(tag, int(s), float(v))
        for s, v in zip(rows[step], values, strict=True)
        if math.isfinite(v)
    ]


def _artifact_files(run_dir: Path) -> list[Path]:
    return [run_dir / name for name in ARTIFACTS if (run_dir / name).is_file()]


def _plots(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "plots").glob("*.png"))


@contextmanager
def _file_store_allowed(uri: str) -> Iterator[None]:
    """MLflow 3 refuses its file store unless ``MLFLOW_ALLOW_FILE_STORE`` is true (it keeps
    the store in maintenance and points to a database); a ``file:`` URI asked for it, so it is
    allowed while the run is logged, and the variable restored after."""
    if not uri.startswith("file:"):
        yield
        return
    before = os.environ.get("MLFLOW_ALLOW_FILE_STORE")
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"
    try:
        yield
    finally:
        if before is None:
            del os.environ["MLFLOW_ALLOW_FILE_STORE"]
        else:
            os.environ["MLFLOW_ALLOW_FILE_STORE"] = before


class MlflowTracker:
    """One MLflow run per fedsim run, in the experiment named by ``experiment`` (else the
    run's own experiment name), with the run directory's path as the tag ``fedsim.run_dir``."""

    # MLflow takes at most this many params and metrics in one batch (its REST API's limits).
    PARAMS_PER_BATCH = 100
    METRICS_PER_BATCH = 1000

    def __init__(self, uri: str, experiment: str | None = None) -> None:
        self.uri, self.experiment = uri, experiment

    def check(self) -> None:
        """Open the store once, so that a URI MLflow cannot use (an unknown scheme, a
        database without its driver) fails before the run, as a :class:`ConfigError`."""
        from mlflow.tracking import MlflowClient

        try:
            with _file_store_allowed(self.uri):
                MlflowClient(tracking_uri=self.uri).search_experiments(max_results=1)
        except Exception as e:  # MLflow's errors differ by store; each is the URI's problem
            detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            message = f"tracking.mlflow.uri: MLflow cannot open {self.uri}: {detail}"
            raise ConfigError(message) from None

    def log(self, run: TrackedRun) -> None:
        import time

        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient
        from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH

        with _file_store_allowed(self.uri):
            client = MlflowClient(tracking_uri=self.uri)
            experiment_id = self._experiment(client, self.experiment or run.experiment)
            run_id = client.create_run(
                experiment_id,
                run_name=run.name,
                tags={"fedsim.run_dir": str(run.run_dir), "fedsim.experiment": run.experiment},
            ).info.run_id
            # A value past MLflow's limit is cut; config.json (an artifact) keeps all of it.
            params = [
                Param(k, v if len(v) <= MAX_PARAM_VAL_LENGTH else v[: MAX_PARAM_VAL_LENGTH - 3])
                for k, v in run.params.items()
            ]
            now = int(time.time() * 1000)
            metrics = [Metric(p.tag, p.value, now, p.step) for p in run.series]
            metrics += [Metric(f"run/{k}", v, now, 0) for k, v in run.figures.items()]
            for i in range(0, len(params), self.PARAMS_PER_BATCH):
                client.log_batch(run_id, params=params[i : i + self.PARAMS_PER_BATCH])
            for i in range(0, len(metrics), self.METRICS_PER_BATCH):
                client.log_batch(run_id, metrics=metrics[i : i + self.METRICS_PER_BATCH])
            client.log_dict(run_id, dict(run.config), "config.json")
            for path in _artifact_files(run.run_dir):
                client.log_artifact(run_id, str(path))
            for path in _plots(run.run_dir):
                client.log_artifact(run_id, str(path), artifact_path="plots")
            client.set_terminated(run_id)

    @staticmethod
    def _experiment(client: MlflowClient, name: str) -> str:
        """The id of the MLflow experiment ``name``, created if missing."""
        from mlflow.exceptions import MlflowException

        found = client.get_experiment_by_name(name)
        if found is not None:
            return str(found.experiment_id)
        try:
            return str(client.create_experiment(name))
        except MlflowException:
            # The jobs of a sweep log at once: another may have created it since.
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
            return str(found.experiment_id)


class TensorBoardTracker:
    """An event file per run under ``root/EXPERIMENT/RUN``: the metrics as scalars, the
    config as hyperparameters and as text, the report as text and the plots as images."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def log_dir(self, run: TrackedRun) -> Path:
        return self.root / run.experiment / run.name

    def log(self, run: TrackedRun) -> None:
        from matplotlib.image import imread
        from omegaconf import OmegaConf
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(log_dir=str(self.log_dir(run)))
        try:
            for p in run.series:
                writer.add_scalar(p.tag, p.value, p.step)
            config = OmegaConf.to_yaml(OmegaConf.create(dict(run.config)))
            writer.add_text("config", _code_block(config))
            report = run.run_dir / "report.md"
            if report.is_file():
                writer.add_text("report", report.read_text(encoding="utf-8"))
            for png in _plots(run.run_dir):
                writer.add_image(f"plots/{png.stem}", imread(png), dataformats="HWC")
            # The run's figures go with the hyperparameters, so that the HParams view can
            # compare runs by them; "." keeps them in this run's own directory.
            figures = {f"run/{k}": v for k, v in run.figures.items()}
            writer.add_hparams(dict(run.params), figures, run_name=".")
        finally:
            writer.close()


def _code_block(text: str) -> str:
    """``text`` as a Markdown code block (TensorBoard renders its text as Markdown)."""
    return "\n".join("    " + line for line in text.splitlines())
