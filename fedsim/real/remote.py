"""``mode=real`` against a server that is already running, for physical devices.

With ``mode.server_url`` set, ``python -m fedsim`` does not start a server or agents: it asks
that server (``POST /api/v1/jobs``, admin token from ``mode.admin_token_file`` or
``$FEDSIM_ADMIN_TOKEN``) to run the experiment over the devices registered with it, follows
the job until it ends, and writes the job's rounds here. The full result layout (events,
plots, the repository) stays on the server, under the path the summary gives.
"""

from __future__ import annotations

import contextlib
import csv
import json
import logging
import os
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from fedsim.config import ConfigError
from fedsim.real.protocol import Paths
from fedsim.report.html import write_report

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


def _call(method: str, url: str, token: str, body: dict | None = None) -> dict[str, Any]:
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
        raise ConfigError(f"mode.server_url: {method} {url}: {e.code} {detail}") from None
    except urllib.error.URLError as e:
        raise ConfigError(f"mode.server_url: cannot reach {url}: {e.reason}") from None


def run_remote(cfg: Any, run_dir: Path, poll_s: float = 1.0) -> dict[str, Any]:
    """Run the experiment as a job on ``cfg.mode.server_url``; returns the finished job."""
    base = cfg.mode.server_url.rstrip("/") + Paths.JOBS
    token = _token(cfg.mode)
    config = OmegaConf.to_container(cfg, resolve=True)
    config.pop("hydra", None)
    config["mode"] = {"name": "real"}
    job = _call("POST", base, token, {"kind": cfg.experiment.kind, "config": config})
    log.info("job %s started on %s", job["id"], cfg.mode.server_url)
    seen = 0
    while job["state"] == "running":
        time.sleep(poll_s)
        job = _call("GET", f"{base}/{job['id']}", token)
        if job["round"] > seen:
            seen = job["round"]
            print(f"round {seen}/{cfg.fl.rounds}", file=sys.stderr)
    _write(run_dir, cfg, job)
    if job["state"] != "succeeded":
        raise ConfigError(f"mode.server_url: job {job['id']} {job['state']}: {job['error']}")
    return job


def _write(run_dir: Path, cfg: Any, job: dict[str, Any]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    rounds = job.get("rounds", [])
    accuracies = [r["accuracy"] for r in rounds if r.get("accuracy") is not None]
    summary = {
        "experiment": cfg.experiment.name,
        "kind": cfg.experiment.kind,
        "mode": "real",
        "seed": cfg.seed,
        "server": cfg.mode.server_url,
        "job": job["id"],
        "state": job["state"],
        "rounds": len(rounds),
        "final_accuracy": accuracies[-1] if accuracies else None,
        "best_accuracy": max(accuracies) if accuracies else None,
        "results_on_server": job.get("results"),
    }
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    if rounds:
        with open(run_dir / "runs.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rounds[0]))
            writer.writeheader()
            writer.writerows(rounds)
    write_report(
        run_dir / "report.md",
        f"# fedsim report: {cfg.experiment.name} (job {job['id']} on {cfg.mode.server_url})\n\n"
        f"The job ran on the server's registered devices and ended **{job['state']}** after "
        f"{len(rounds)} rounds; final accuracy "
        f"{summary['final_accuracy'] if summary['final_accuracy'] is not None else 'n/a'}.\n\n"
        f"Its full results (events, plots, model repository) are on the server under "
        f"`{job.get('results')}`; `runs.csv` here holds its rounds.\n",
    )
