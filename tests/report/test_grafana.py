"""Grafana dashboards and provisioning: their structure and ``fedsim grafana-dashboards``.

That every PromQL expression parses and returns series is checked against a real Prometheus in
test_prometheus_integration.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from fedsim.monitor.promql import monitoring_queries
from fedsim.report import grafana, grafana_cli

UIDS = ["fedsim-devices", "fedsim-monitoring", "fedsim-models"]


def test_three_dashboards_with_laid_out_panels_on_the_provisioned_datasource():
    boards = grafana.dashboards()

    assert list(boards) == UIDS
    for uid, board in boards.items():
        assert board["uid"] == uid and board["panels"]
        ids = [p["id"] for p in board["panels"]]
        assert len(set(ids)) == len(ids)
        for panel in board["panels"]:
            pos = panel["gridPos"]
            assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
            assert panel["targets"], panel["title"]
            for target in [panel, *panel["targets"]]:
                assert target["datasource"]["uid"] == grafana.DATASOURCE_UID
        # No two panels overlap on the grid.
        cells = [
            (x, y)
            for p in board["panels"]
            for x in range(p["gridPos"]["x"], p["gridPos"]["x"] + p["gridPos"]["w"])
            for y in range(p["gridPos"]["y"], p["gridPos"]["y"] + p["gridPos"]["h"])
        ]
        assert len(cells) == len(set(cells)), uid
        names = [v["name"] for v in board["templating"]["list"]]
        assert names == ["group", "device"]


def test_per_device_panels_follow_the_device_and_group_variables():
    monitoring = grafana.dashboards()["fedsim-monitoring"]

    for where, expr in grafana.expressions(monitoring):
        if "variable" not in where:
            assert '$device"' in expr and '$group"' in expr, where


def test_the_monitoring_dashboard_covers_cpu_memory_bandwidth_and_training():
    exprs = " ".join(e for _, e in grafana.expressions(grafana.dashboards()["fedsim-monitoring"]))

    for series in (
        "node_cpu_seconds_total",
        "fedsim_agent_cpu_busy_ratio",
        "node_memory_MemAvailable_bytes",
        "fedsim_agent_probe_bandwidth_bytes_per_second",
        "fedsim_agent_train_seconds_sum",
        "fedsim_agent_busy",
    ):
        assert series in exprs


def test_the_monitoring_dashboard_shows_gpu_disk_and_network_per_device():
    panels = {p["title"]: p for p in grafana.dashboards()["fedsim-monitoring"]["panels"]}
    # What the server's own dashboard asks Prometheus, for the dashboard's selection.
    server = monitoring_queries(grafana.SEL, "$__rate_interval")

    shown = {
        title: ([t["expr"] for t in panels[title]["targets"]], panels[title]["fieldConfig"])
        for title in ("GPU utilisation", "Disk traffic", "Network traffic")
    }

    assert shown["GPU utilisation"][0] == [server["gpu_util"]]
    assert shown["Disk traffic"][0] == [server["disk_read"], server["disk_write"]]
    assert shown["Network traffic"][0] == [server["net_receive"], server["net_transmit"]]
    assert shown["GPU utilisation"][1]["defaults"]["unit"] == "percentunit"
    for title in ("Disk traffic", "Network traffic"):
        assert shown[title][1]["defaults"]["unit"] == "Bps"  # rates of byte counters
        # One series per device and direction, told apart in the legend.
        legends = [t["legendFormat"] for t in panels[title]["targets"]]
        assert all("{{fedsim_device}}" in legend for legend in legends)
        assert len(set(legends)) == 2
    exprs = " ".join(e for title in shown for e in shown[title][0])
    for series in (
        "fedsim_agent_gpu_utilization_ratio",
        "DCGM_FI_DEV_GPU_UTIL",
        "node_disk_read_bytes_total",
        "node_disk_written_bytes_total",
        "fedsim_agent_disk_read_bytes_total",
        "fedsim_agent_disk_written_bytes_total",
        "node_network_receive_bytes_total",
        "node_network_transmit_bytes_total",
        "fedsim_agent_network_receive_bytes_total",
        "fedsim_agent_network_transmit_bytes_total",
    ):
        assert series in exprs, series


@pytest.mark.skipif(shutil.which("promtool") is None, reason="needs promtool")
def test_every_expression_parses_with_promtool(tmp_path: Path):
    # promtool parses the expressions of recording rules offline; Grafana's variables take
    # the values a dashboard showing everything gives them.
    variables = {"$device": ".*", "$group": ".*", "$__rate_interval": "30s"}
    rules = []
    for board in grafana.dashboards().values():
        for _, expr in grafana.expressions(board):
            for name, value in variables.items():
                expr = expr.replace(name, value)
            rules.append({"record": f"fedsim:check_{len(rules)}", "expr": expr})
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "grafana", "rules": rules}]}))

    check = subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )

    assert check.returncode == 0, check.stdout + check.stderr
    assert f"{len(rules)} rules found" in check.stdout
    # The check can fail: an expression cut short is refused.
    rules[0]["expr"] = rules[0]["expr"] + " or"
    path.write_text(yaml.safe_dump({"groups": [{"name": "grafana", "rules": rules}]}))
    broken = subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert broken.returncode != 0


def test_the_cli_writes_dashboards_and_provisioning(tmp_path: Path, capsys):
    out = tmp_path / "grafana"
    argv = [str(out), "--prometheus-url", "http://prometheus:9090"]

    assert grafana_cli.main([*argv, "--dashboards-path", "/dash"]) == 0

    files = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert files == [
        "dashboards/fedsim-devices.json",
        "dashboards/fedsim-models.json",
        "dashboards/fedsim-monitoring.json",
        "provisioning/dashboards/fedsim.yaml",
        "provisioning/datasources/fedsim.yaml",
    ]
    for uid in UIDS:
        assert json.loads((out / f"dashboards/{uid}.json").read_text())["uid"] == uid
    [source] = yaml.safe_load((out / "provisioning/datasources/fedsim.yaml").read_text())[
        "datasources"
    ]
    assert source["url"] == "http://prometheus:9090" and source["type"] == "prometheus"
    assert source["uid"] == grafana.DATASOURCE_UID
    [provider] = yaml.safe_load((out / "provisioning/dashboards/fedsim.yaml").read_text())[
        "providers"
    ]
    assert provider["options"]["path"] == "/dash"
    assert "wrote 5 files" in capsys.readouterr().out
    # Same input, same bytes: the files can live in version control.
    again = tmp_path / "again"
    assert grafana_cli.main([str(again), "--prometheus-url", "http://prometheus:9090",
                             "--dashboards-path", "/dash"]) == 0  # fmt: skip
    for name in files:
        assert (again / name).read_bytes() == (out / name).read_bytes()


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["--prometheus-url", "prometheus:9090"], "prometheus URL"),
        (["--no-such-option"], "unrecognized arguments"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(tmp_path: Path, capsys, argv, complaint):
    with pytest.raises(SystemExit) as exit_:
        grafana_cli.main([str(tmp_path / "out"), *argv])

    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and complaint in err
    assert not (tmp_path / "out").exists()


def test_existing_files_are_kept_and_nothing_is_written_without_force(tmp_path: Path, capsys):
    # Prepare: a directory holding one of the files, edited by hand.
    out = tmp_path / "grafana"
    mine = out / "dashboards" / "fedsim-devices.json"
    mine.parent.mkdir(parents=True)
    mine.write_bytes(b'{"uid": "fedsim-devices", "title": "mine"}')

    # Execute
    with pytest.raises(SystemExit) as exit_:
        grafana_cli.main([str(out)])

    # Assert: one line naming the file and --force; the file as it was and no other written.
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(mine) in err and "pass --force" in err
    assert mine.read_bytes() == b'{"uid": "fedsim-devices", "title": "mine"}'
    assert [p for p in out.rglob("*") if p.is_file()] == [mine]


def test_force_replaces_the_existing_files(tmp_path: Path):
    # Prepare: the files written once, one of them edited since.
    out = tmp_path / "grafana"
    assert grafana_cli.main([str(out)]) == 0
    mine = out / "dashboards" / "fedsim-devices.json"
    mine.write_text("{}")

    # Execute
    code = grafana_cli.main([str(out), "--force"])

    # Assert
    assert code == 0
    assert json.loads(mine.read_text())["uid"] == "fedsim-devices"


def test_an_unwritable_directory_exits_2_naming_it(tmp_path: Path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")

    with pytest.raises(SystemExit) as exit_:
        grafana_cli.main([str(blocker / "out")])

    assert exit_.value.code == 2
    assert str(blocker / "out") in capsys.readouterr().err
