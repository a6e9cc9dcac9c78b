"""The main job end to end, as a user runs it: ``python -m fedsim +experiment=imagenet_yolo``."""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CONTRACT = ROOT.parent / "shared" / "checks" / "run-contract"
SMALL_GRID = ["crossover.bandwidth_mbps.num=3", "crossover.samples_per_device.num=3"]


def fedsim(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "fedsim", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


def rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def run_dir_of(proc: subprocess.CompletedProcess) -> Path:
    last = proc.stdout.strip().splitlines()[-1]
    assert last.startswith("results: "), proc.stdout + proc.stderr
    return Path(last.removeprefix("results: "))


@pytest.fixture(scope="module")
def main_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run") / "imagenet_yolo"
    proc = fedsim("+experiment=imagenet_yolo", "repetitions=4", f"hydra.run.dir={out}")
    assert proc.returncode == 0, proc.stderr
    assert run_dir_of(proc) == out
    return out


def test_main_job_writes_every_output(main_run: Path):
    s = json.loads((main_run / "summary.json").read_text())
    assert s["experiment"] == "imagenet_yolo" and s["mode"] == "sim" and s["repetitions"] == 4
    assert s["paper"]["t_ref_s"] == 6.02 and s["paper"]["t_new_s"] == 6.72
    assert s["workload"]["model"]["state_values"] == 64_429_405
    for key in ("t_ref_s", "t_new_s"):
        assert s[key]["min"] <= s[key]["mean"] <= s[key]["max"]
    runs = rows(main_run / "runs.csv")
    assert len(runs) == 8  # 4 repetitions x 2 scenarios
    for r in runs:
        parts = sum(float(r[k]) for k in ("transfer_s", "compute_s", "aggregation_s", "waiting_s"))
        assert parts == pytest.approx(float(r["total_s"]), rel=1e-9)
    events = rows(main_run / "events.csv")
    kinds = {e["kind"] for e in events}
    assert kinds >= {"data_upload", "model_download", "train", "update_upload", "aggregate"}
    assert {p.name for p in (main_run / "plots").glob("*.png")} == {
        "tref_tnew.png",
        "breakdown.png",
        "timeline.png",
        "crossover.png",
    }
    assert "6.02" in (main_run / "report.md").read_text()


def test_main_job_keeps_the_run_contract(main_run: Path):
    if not CONTRACT.exists():
        pytest.skip(f"{CONTRACT} is not there")
    proc = subprocess.run(
        [sys.executable, str(CONTRACT), str(main_run)], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stdout
    assert "contract kept" in proc.stdout


def test_formula_1_in_summary_matches_runs(main_run: Path):
    s = json.loads((main_run / "summary.json").read_text())
    runs = rows(main_run / "runs.csv")
    ref = {r["repetition"]: float(r["total_s"]) for r in runs if r["scenario"] == "cloud_based"}
    new = {r["repetition"]: float(r["total_s"]) for r in runs if r["scenario"] == "client_based"}
    rate = sum((ref[k] - new[k]) / ref[k] for k in ref) / len(ref)
    assert s["time_saving_rate"] == pytest.approx(rate)


def test_same_seed_same_numbers(tmp_path: Path):
    dirs = []
    for name in ("a", "b"):
        proc = fedsim(
            "+experiment=imagenet_yolo",
            "repetitions=3",
            "seed=11",
            *SMALL_GRID,
            f"hydra.run.dir={tmp_path / name}",
        )
        assert proc.returncode == 0, proc.stderr
        dirs.append(run_dir_of(proc))
    a, b = (json.loads((d / "summary.json").read_text()) for d in dirs)
    assert a["t_ref_s"] == b["t_ref_s"] and a["t_new_s"] == b["t_new_s"]
    assert (dirs[0] / "runs.csv").read_text() == (dirs[1] / "runs.csv").read_text()
    assert (dirs[0] / "events.csv").read_text() == (dirs[1] / "events.csv").read_text()


def test_multirun_sweep_over_link_bandwidth(tmp_path: Path):
    proc = fedsim(
        "-m",
        "+experiment=imagenet_yolo",
        "network.wan_1g.bandwidth_mbps=10,1000",
        "repetitions=2",
        *SMALL_GRID,
        f"hydra.sweep.dir={tmp_path}",
    )
    assert proc.returncode == 0, proc.stderr
    summaries = [json.loads((tmp_path / str(i) / "summary.json").read_text()) for i in (0, 1)]
    slow, fast = (s["t_new_s"]["mean"] for s in summaries)
    # 2 x 257.7 MB through a 10 Mb/s uplink takes minutes; through 1 Gb/s about 4 s.
    assert slow > 400 > 20 > fast


@pytest.mark.parametrize(
    ("override", "names"),
    [
        ("network.wan_1g.bandwidth_mbps=-5", "network.wan_1g.bandwidth_mbps"),
        ("topology.devices.4.hardware=quantum_9000", "topology.devices[4].hardware"),
        ("topology.devices.7.link.to=42", "topology.devices[7].link.to"),
        ("experiment.clients=[4,99]", "experiment.clients"),
        ("workload.model=resnet9000", "workload.model"),
        ("network.wan_1g.bandwith_mbps=3", "bandwith_mbps"),
        # Issue 13's reproductions: each once gave a traceback, or (inf) an Infinity in
        # summary.json.
        ("seed=-1", "seed"),
        ("network.wan_1g.bandwidth_mbps=nan", "network.wan_1g.bandwidth_mbps"),
        ("network.wan_1g.bandwidth_mbps=inf", "network.wan_1g.bandwidth_mbps"),
    ],
)
def test_bad_configuration_exits_with_one_line(override: str, names: str, tmp_path: Path):
    proc = fedsim("+experiment=imagenet_yolo", override, f"hydra.run.dir={tmp_path}")
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and names in lines[0]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "summary.json").exists()


@pytest.mark.parametrize(
    ("per_group", "starts"),
    [
        # 100 clients, each needing a batch of 16 digits, from 1438 training images.
        (50, "error: experiment.clients: 100 clients need 1600"),
        # 80 need 1280: enough in all, but no Dirichlet draw at alpha 0.5 gives each 16.
        (40, "error: partition.alpha: no Dirichlet split"),
    ],
)
def test_a_split_that_cannot_feed_every_client_exits_with_one_line(
    per_group: int, starts: str, tmp_path: Path
):
    # Prepare
    fleet = ["topology=edge_fleet", "topology.generate.groups=2"]
    fleet += [f"topology.generate.devices_per_group={per_group}"]

    # Execute
    proc = fedsim("+experiment=fl_digits", *fleet, f"hydra.run.dir={tmp_path}")

    # Assert
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith(starts)


@pytest.mark.parametrize("flag", [["--config-dir", "/nonexistent/conf"], ["-cd=/nonexistent/conf"]])
def test_a_config_dir_that_is_not_there_exits_with_one_line(flag: list[str]):
    # Execute: Hydra printed a paragraph and a hint about HYDRA_FULL_ERROR.
    proc = fedsim(*flag, "+experiment=fl_digits")

    # Assert
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines() == [
        f"error: {flag[0].partition('=')[0]}: no directory '/nonexistent/conf'"
    ]


def test_unknown_experiment_exits_with_one_line():
    proc = fedsim("+experiment=imagenet_yolov9")
    assert proc.returncode != 0
    line = proc.stderr.strip()
    assert line.startswith("error: unknown experiment 'imagenet_yolov9' (available: ")
    assert "imagenet_yolo" in line and "\n" not in line


def test_help_lists_the_commands_and_how_to_run_the_main_job():
    # Prepare
    from fedsim.__main__ import SUBCOMMANDS

    # Execute
    proc = fedsim("--help")

    # Assert
    assert proc.returncode == 0, proc.stderr
    assert "fedsim +experiment=imagenet_yolo" in proc.stdout
    for name, command in SUBCOMMANDS.items():
        assert f"  {name}" in proc.stdout and command.summary in proc.stdout
    assert "--hydra-help" in proc.stdout and "is powered by Hydra" not in proc.stdout


def test_version_is_fedsims_own():
    import fedsim as package

    proc = fedsim("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"fedsim {package.__version__}"


@pytest.mark.parametrize(
    ("args", "line"),
    [
        (["experiment=fl_digits"], "error: experiment is added, not overridden: use +experiment="),
        (["+experiment=fl_digits", "strategy=fedsgd"], "error: unknown strategy 'fedsgd' ("),
        (["+experiment=fl_digits", "topology=mesh"], "error: unknown topology 'mesh' ("),
        (["+experiment=fl_digits", "workload=gpt"], "error: unknown workload 'gpt' ("),
        (["+experiment=fl_digits", "mode=cloud"], "error: unknown mode 'cloud' ("),
        (["+experiment=fl_digits", "hardware=rpi5"], "error: hardware profiles are named per "),
        (["+experiment=fl_digits", "network=5g"], "error: network profiles are named per "),
        (["-m", "+experiment=fl_digits", "strategy=fedavg,fedsgd"], "error: unknown strategy"),
        (["agnet"], "error: unknown command 'agnet' (commands: server, agent"),
        # Hydra takes one run mode and raised a traceback for two.
        (["-m", "--cfg", "job", "+experiment=fl_digits"], "error: --cfg and -m do not go"),
    ],
)
def test_a_wrong_choice_exits_with_one_line_naming_what_there_is(
    args: list[str], line: str, tmp_path: Path
):
    proc = fedsim(*args, f"hydra.run.dir={tmp_path}")
    assert proc.returncode != 0
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith(line)
    if "unknown strategy" in line:
        assert "fedavg, fedprox" in proc.stderr


def test_a_config_group_on_the_search_path_is_found(tmp_path: Path):
    # Prepare: a user's own experiment and topology, outside fedsim's conf/.
    extra = tmp_path / "conf"
    (extra / "experiment").mkdir(parents=True)
    (extra / "topology").mkdir()
    experiment = (ROOT / "conf" / "experiment" / "fl_digits.yaml").read_text()
    mine = experiment.replace("name: fl_digits", "name: mine").replace(
        "override /topology: keti_testbed", "override /topology: my_testbed"
    )
    assert mine != experiment
    (extra / "experiment" / "mine.yaml").write_text(mine)
    topology = (ROOT / "conf" / "topology" / "keti_testbed.yaml").read_text()
    (extra / "topology" / "my_testbed.yaml").write_text(
        topology.replace("name: keti_testbed", "name: my_testbed")
    )

    # Execute
    proc = fedsim(
        "+experiment=mine",
        f"hydra.searchpath=[file://{extra}]",
        "fl.rounds=1",
        f"hydra.run.dir={tmp_path / 'run'}",
    )

    # Assert
    assert proc.returncode == 0, proc.stderr
    s = json.loads((run_dir_of(proc) / "summary.json").read_text())
    assert s["experiment"] == "mine" and s["topology"] == "my_testbed"


def test_server_and_agent_take_the_same_log_levels():
    # Prepare
    from fedsim.real.agent.cli import build_parser
    from fedsim.real.server.cli import parser

    def log_level(p: argparse.ArgumentParser) -> argparse.Action:
        (action,) = [a for a in p._actions if "--log-level" in a.option_strings]
        return action

    server, agent = log_level(parser()), log_level(build_parser())

    # Execute
    spelled = [(a.type("WARNING"), a.type("warning")) for a in (server, agent)]

    # Assert
    assert server.choices == agent.choices
    assert spelled == [("warning", "warning")] * 2


def test_help_into_a_closed_pipe_ends_quietly():
    # Prepare: a reader that leaves before the help is written (`fedsim --help | head -0`)
    proc = subprocess.Popen(
        [sys.executable, "-m", "fedsim", "--help"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()
    # Execute
    err = proc.stderr.read().decode()
    proc.wait(timeout=60)
    # Assert
    assert "Traceback" not in err and "BrokenPipeError" not in err
    assert proc.returncode == 0
