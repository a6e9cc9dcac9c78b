"""Grafana dashboards and provisioning: their structure and ``fedsim grafana-dashboards``.

That every PromQL expression parses and returns series is checked against a real Prometheus in
test_prometheus_integration.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

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


def test_an_unwritable_directory_exits_2_naming_it(tmp_path: Path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")

    with pytest.raises(SystemExit) as exit_:
        grafana_cli.main([str(blocker / "out")])

    assert exit_.value.code == 2
    assert str(blocker / "out") in capsys.readouterr().err
