"""Real mode under failure: an agent killed mid-round, a server restarted mid-job, jobs API."""

from __future__ import annotations

import hashlib
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from clusters import cluster_for, config, run_over

from fedsim.pipeline import Jobs
from fedsim.real.board import TaskState
from fedsim.real.jobs import JobManager
from fedsim.real.launch import ServerThread
from fedsim.store.safetensors_io import decode


def test_agent_killed_mid_round_the_round_completes_with_the_others(tmp_path: Path):
    # Thirty local epochs keep each agent training long enough (about a second) to be killed
    # in the middle of it.
    cfg = config("fl.rounds=2", "fl.deadline_s=10", "fl.min_fit=2", "fl.local_epochs=30")
    with cluster_for(cfg, tmp_path) as cluster:
        victim = 8

        def kill_when_training() -> None:
            # Wait until the victim has taken its round-1 task, then kill it outright.
            while True:
                held = [
                    t
                    for t in cluster.board.pending(victim)
                    if t.state is TaskState.TAKEN and ":r1-" in t.id
                ]
                if held:
                    cluster.stop_agent(victim, kill=True)
                    return
                time.sleep(0.01)

        def on_round(row):
            if row["round"] == 0:
                threading.Thread(target=kill_when_training, daemon=True).start()

        result = run_over(cluster, cfg, tmp_path / "run", on_round)
    rounds = result.rows
    assert [r.aggregated for r in rounds] == [True, True]
    assert rounds[0].completed == 3
    assert rounds[1].completed == 2 and rounds[1].failed == 1
    assert 8 in {d for _, d, _ in result.failures}


def test_server_restart_mid_job_loses_nothing(tmp_path: Path):
    cfg = config("fl.rounds=3", "fl.deadline_s=60")
    with cluster_for(cfg, tmp_path) as cluster:

        def on_round(row):
            if row["round"] == 0:
                # Stop the server and bring up a fresh application on the same port and stores.
                from fedsim.real.server.app import init_app
                from fedsim.real.server.config import ServerConfig

                old = cluster.server
                old.stop()
                app = init_app(
                    ServerConfig(
                        host=old.host,
                        port=old.port,
                        data_dir=tmp_path,
                        admin_token=cluster.admin_token,
                        enrollment_token=cluster.enrollment_token,
                        patience_s=cluster.mode.patience_s,
                    ),
                    board=cluster.board,
                    registry=cluster.registry,
                    repository=cluster.repository,
                )
                cluster.server = ServerThread(app, host=old.host, port=old.port)
                cluster.server.start()

        result = run_over(cluster, cfg, tmp_path / "run", on_round)
        repo = cluster.repository
        versions = repo.list_versions("digits_cnn")
        assert [v.version for v in versions] == list(range(1, len(versions) + 1))
        for v in versions:
            with repo.open_blob("digits_cnn", v.version) as f:
                blob = f.read()
            assert hashlib.sha256(blob).hexdigest() == v.sha256
            decode(blob)
    assert [r.aggregated for r in result.rows] == [True, True, True]
    assert all(r.completed == 3 for r in result.rows)
    assert {v.round for v in versions} >= {0, 1, 2}


def test_job_api_runs_federated_training_on_the_servers_devices(tmp_path: Path):
    cfg = config("fl.rounds=2")
    with cluster_for(cfg, tmp_path) as cluster:
        jobs = JobManager(
            data_dir=tmp_path,
            stores=cluster.stores,
            runner=Jobs(),
        )
        with pytest.raises(ValueError, match="kind"):
            jobs.start("teleport", {})
        job = jobs.start("federated", {"experiment": {"name": "fl_digits"}, "fl": {"rounds": 2}})
        deadline = time.monotonic() + 120
        while jobs.get(job["id"])["state"] == "running" and time.monotonic() < deadline:
            time.sleep(0.2)
        done = jobs.get(job["id"])
    assert done["state"] == "succeeded", done["error"]
    assert done["round"] == 2 and len(done["rounds"]) == 2
    assert (Path(done["results"]) / "summary.json").exists()


def test_real_mode_against_a_running_server_runs_as_a_job(tmp_path: Path):
    import os
    import subprocess
    import sys

    cfg = config("fl.rounds=2")
    with cluster_for(cfg, tmp_path / "server") as cluster:
        token = tmp_path / "admin.token"
        token.write_text(cluster.admin_token)
        # Two jobs, one after the other: issue 15 found the second failing with
        # DuplicateModel, the model being registered already.
        procs = [
            subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "fedsim",
                    "+experiment=fl_digits",
                    "mode=real",
                    f"mode.server_url={cluster.server.url}",
                    f"mode.admin_token_file={token}",
                    "fl.rounds=2",
                    f"hydra.run.dir={tmp_path / run}",
                ],
                capture_output=True,
                text=True,
                timeout=300,
                env=os.environ,
            )
            for run in ("run", "again")
        ]
        # The job's rounds reached the server's own metrics.
        with urllib.request.urlopen(f"{cluster.server.url}/metrics", timeout=5) as r:
            exposition = r.read().decode()
    for proc in procs:
        assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fedsim_round_duration_seconds_count 4.0" in exposition
    assert "fedsim_aggregation_seconds_count 4.0" in exposition
    assert 'fedsim_jobs{state="succeeded"} 2.0' in exposition
    s = __import__("json").loads((tmp_path / "run" / "summary.json").read_text())
    assert s["state"] == "succeeded" and s["rounds"] == 2 and s["mode"] == "real"
    assert Path(s["results_on_server"], "summary.json").exists()
    # The job's events came back with it (issue 15: events.csv and the plots were missing).
    events = (tmp_path / "run" / "events.csv").read_text()
    assert events == Path(s["results_on_server"], "events.csv").read_text()
    assert "update_upload" in events
    assert (tmp_path / "run" / "plots" / "timeline.png").exists()
