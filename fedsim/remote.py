"""``mode=real`` against a server that is already running, for physical devices.

With ``mode.server_url`` set, ``python -m fedsim`` does not start a server or agents: it asks
that server (``POST /api/v1/jobs``, admin token from ``mode.admin_token_file`` or
``$FEDSIM_ADMIN_TOKEN``) to run the experiment over the devices registered with it (there the
pipeline runs it with the ``attached`` runtime), follows the job until it ends, and writes the
job's rounds here through the one run writer. The events and the repository stay on the
server, under the path the summary gives.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from fedsim.config import ConfigError
from fedsim.core.results import FEDERATED, RoundRow, RunResult
from fedsim.real.protocol import Paths
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


def _call(method: str, url: str, token: str, body: dict | None = None) -> dict[str, Any]:
    try:
        return server_call(method, url, token, body)
    except ServerCallError as e:
        raise ConfigError(f"mode.server_url: {e}") from None


def run_remote(spec: ExperimentSpec, run_dir: Path, poll_s: float = 1.0) -> dict[str, Any]:
    """Run ``spec`` as a job on ``spec.mode.server_url``; returns the finished job."""
    if spec.kind != FEDERATED:
        raise ConfigError("mode.server_url: a running server runs federated jobs only")
    url = str(spec.mode.server_url)
    base = url.rstrip("/") + Paths.JOBS
    token = _token(spec.mode)
    config = {**spec.config, "mode": {"name": "real"}}
    job = _call("POST", base, token, {"kind": spec.kind, "config": config})
    log.info("job %s started on %s", job["id"], url)
    seen = 0
    while job["state"] == "running":
        time.sleep(poll_s)
        job = _call("GET", f"{base}/{job['id']}", token)
        if job["round"] > seen:
            seen = job["round"]
            print(f"round {seen}/{spec.fl.rounds}", file=sys.stderr)
    _write(run_dir, spec, job)
    if job["state"] != "succeeded":
        raise ConfigError(f"mode.server_url: job {job['id']} {job['state']}: {job['error']}")
    return job


def _write(run_dir: Path, spec: ExperimentSpec, job: dict[str, Any]) -> None:
    from fedsim.report.write import write_run

    rows = [RoundRow(**r) for r in job.get("rounds", [])]
    accuracies = [r.accuracy for r in rows if r.accuracy is not None]
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
        "final_accuracy": accuracies[-1] if accuracies else None,
        "best_accuracy": max(accuracies) if accuracies else None,
        "results_on_server": job.get("results"),
    }
    result = RunResult(
        kind=FEDERATED,
        summary=summary,
        rows=rows,
        events=[],
        assumptions=[
            f"The job ran as job {job['id']} on {spec.mode.server_url}, over the devices "
            f"registered there, and ended {job['state']}. Its events and model repository are "
            f"on the server under {job.get('results')}."
        ],
    )
    write_run(run_dir, result)
