"""``mode=real`` against a server that is already running, for physical devices.

With ``mode.server_url`` set, ``python -m fedsim`` does not start a server or agents: it asks
that server (``POST /api/v1/jobs``, admin token from ``mode.admin_token_file`` or
``$FEDSIM_ADMIN_TOKEN``) to run the experiment over the devices registered with it (there the
pipeline runs it with the ``attached`` runtime), follows the job until it ends with a progress
bar over its rounds, fetches the job's event log, and writes the job's rounds and events here
through the one run writer (summary, runs.csv, events.csv, report and plots). The model
repository and the prediction of the run (fidelity) stay on the server, under the path the
summary gives.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from tqdm import tqdm

from fedsim.config import ConfigError
from fedsim.core.events import EVENTS_FILE
from fedsim.core.results import FEDERATED, WALL_TIME_KEY, RoundRow, RunResult, to_target
from fedsim.real.protocol import Paths, path
from fedsim.spec import ExperimentSpec

log = logging.getLogger(__name__)
ADMIN_ENV = "FEDSIM_ADMIN_TOKEN"


def _token(mode: Any) -> str:
    if mode.admin_token_file:
        try:
            return Path(mode.admin_token_file).read_text().strip()
        except OSError as e:
            raise ConfigError(f"mode.admin_token_file: {e.strerror}: {e.filename}") from None
    token = os.environ.get(ADMIN_ENV)
    if not token:
        raise ConfigError(f"mode.server_url: needs mode.admin_token_file or ${ADMIN_ENV}")
    return token


class ServerCallError(Exception):
    """A request to a running fedsim server that failed; the message says which and why."""


def server_call(method: str, url: str, token: str, body: dict | None = None) -> dict[str, Any]:
    """``method url`` to a running server with the admin ``token`` (and ``body`` as JSON); the
    JSON answer. :class:`ServerCallError` carries the server's own error message, or why the
    server could not be reached."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        url,
        data=data,
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as r:
            return json.loads(r.read() or b"{}")
    except urllib.error.HTTPError as e:
        detail = e.read().decode(errors="replace")
        with contextlib.suppress(ValueError, KeyError, TypeError):
            detail = json.loads(detail)["error"]["message"]
        raise ServerCallError(f"{method} {url}: {e.code} {detail}") from None
    except urllib.error.URLError as e:
        raise ServerCallError(f"cannot reach {url}: {e.reason}") from None


def server_download(url: str, token: str, dest: Path) -> None:
    """``GET url`` from a running server with the admin ``token``, streamed into ``dest``;
    :class:`ServerCallError` as :func:`server_call` raises it."""
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as r, open(dest, "wb") as f:
            shutil.copyfileobj(r, f)
    except urllib.error.HTTPError as e:
        raise ServerCallError(f"GET {url}: {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise ServerCallError(f"cannot reach {url}: {e.reason}") from None


def _call(method: str, url: str, token: str, body: dict | None = None) -> dict[str, Any]:
    try:
        return server_call(method, url, token, body)
    except ServerCallError as e:
        raise ConfigError(f"mode.server_url: {e}") from None


def run_remote(
    spec: ExperimentSpec, run_dir: Path, poll_s: float = 1.0, *, progress: bool = True
) -> RunResult:
    """Run ``spec`` as a job on ``spec.mode.server_url`` and write it into ``run_dir``; returns
    the finished job as a run result (``summary["state"]`` says how it ended)."""
    if spec.kind != FEDERATED:
        raise ConfigError("mode.server_url: a running server runs federated jobs only")
    url = str(spec.mode.server_url)
    base = url.rstrip("/") + Paths.JOBS
    token = _token(spec.mode)
    config = {**spec.config, "mode": {"name": "real"}}
    job = _call("POST", base, token, {"kind": spec.kind, "config": config})
    log.info("job %s started on %s", job["id"], url)
    # The same bar as a run on this host shows, its rounds counted as the server reports them.
    bar = tqdm(
        total=spec.fl.rounds,
        desc=f"rounds (job {job['id']})",
        unit="round",
        file=sys.stderr,
        disable=not progress,
    )
    with bar:
        while job["state"] == "running":
            time.sleep(poll_s)
            job = _call("GET", f"{base}/{job['id']}", token)
            bar.update(job["round"] - bar.n)
    from fedsim.pipeline import report_plots
    from fedsim.report.write import write_run

    events = _events(url.rstrip("/") + path(Paths.JOB_EVENTS, job_id=job["id"]), token, run_dir)
    result = _result(spec, job, events)
    write_run(run_dir, result, plots=report_plots(spec))
    if job["state"] != "succeeded":
        raise ConfigError(f"mode.server_url: job {job['id']} {job['state']}: {job['error']}")
    return result


def _events(url: str, token: str, run_dir: Path) -> Path | None:
    """The job's events.csv, fetched into ``run_dir``; None (and a warning) without it."""
    run_dir.mkdir(parents=True, exist_ok=True)
    dest = run_dir / EVENTS_FILE
    try:
        server_download(url, token, dest)
    except ServerCallError as e:
        log.warning("the job's events are not here (%s); its directory on the server has them", e)
        dest.unlink(missing_ok=True)
        return None
    return dest


def _result(spec: ExperimentSpec, job: dict[str, Any], events: Path | None) -> RunResult:
    """The finished ``job`` as a run result: its rounds, and its events when fetched."""
    rows = [RoundRow(**r) for r in job.get("rounds", [])]
    accuracies = [r.accuracy for r in rows if r.accuracy is not None]
    round_to_target, time_to_target = to_target(rows, spec.fl.target_accuracy)
    summary = {
        "experiment": spec.name,
        "kind": FEDERATED,
        "mode": "real",
        "seed": spec.seed,
        "server_url": spec.mode.server_url,
        "job": job["id"],
        "state": job["state"],
        "rounds": len(rows),
        "rounds_aggregated": sum(r.aggregated for r in rows),
        "rounds_failed": sum(not r.aggregated for r in rows),
        "updates_lost": sum(r.failed for r in rows),
        "updates_rejected": sum(r.rejected for r in rows),
        "fl_mode": spec.fl.mode,
        # The server's clock of the job, from its start to the end of its last round.
        WALL_TIME_KEY: rows[-1].finished_s if rows else None,
        "final_accuracy": accuracies[-1] if accuracies else None,
        "best_accuracy": max(accuracies) if accuracies else None,
        "target_accuracy": spec.fl.target_accuracy,
        "round_to_target": round_to_target,
        "time_to_target_s": time_to_target,
        "results_on_server": job.get("results"),
        "topology": spec.topology.name,
        "server": spec.topology.server,
        "clients": list(spec.clients),
        "strategy": dict(spec.strategy),
    }
    return RunResult(
        kind=FEDERATED,
        summary=summary,
        rows=rows,
        events=[],
        events_file=events,
        # The devices of a running server train on the data they hold (their --data); neither
        # the server nor this host sees their labels.
        label_counts_absent="the server's devices train on data it does not see",
        assumptions=[
            f"The job ran as job {job['id']} on {spec.mode.server_url}, over the devices "
            f"registered there, and ended {job['state']}. Its model repository and the "
            f"simulator's prediction of it are on the server under {job.get('results')}."
        ],
    )
