"""``fedsim export-topology``: a recorded fleet, replayed in the simulator, is the fleet recorded.

A LocalCluster of fl_digits' three trainers, each agent measuring itself at start
(``--calibrate``) and probing its link; the export reads the server's registry, and the
topology Hydra composes from the exported files holds the same devices, groups, measured
profiles and links.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from fedsim.config import build_spec, build_topology, compose, conf_dir
from fedsim.core.topology import MEASURED
from fedsim.export_topology import MBIT, main
from tests.clusters import cluster_for, config

pytestmark = pytest.mark.slow


def replayed(out: Path, *overrides: str):
    """The topology ``python -m fedsim --config-dir OUT +experiment=fl_digits ...`` builds."""
    cfg = compose(["+experiment=fl_digits", f"hydra.searchpath=[file://{out}]", *overrides])
    return build_topology(cfg, conf_dir())


def export_args(cluster, token: Path, out: Path) -> list[str]:
    """``fedsim export-topology``'s arguments for ``cluster``'s server, as topology ``rec``."""
    return [
        *("--server", cluster.server.url, "--token-file", str(token)),
        *("--name", "rec", "--out", str(out)),
    ]


def test_export_then_replay_gives_the_recorded_fleet(tmp_path, capsys):
    # Prepare: three agents that calibrate (briefly) and probe their link as they start.
    cfg = config("mode.heartbeat_interval_s=0.2")
    out = tmp_path / "exported"
    calibrate = ["--calibrate", "--calibrate-model", "digits_cnn"]
    clients = build_spec(cfg, conf_dir()).clients
    with cluster_for(
        cfg, tmp_path / "run", agent_args={dev: calibrate for dev in clients}
    ) as cluster:
        deadline = time.monotonic() + 45
        while time.monotonic() < deadline:
            records = [cluster.registry.get(d) for d in cluster.clients]
            if all(r.measured and "rtt" in r.resources for r in records):
                break
            time.sleep(0.2)
        else:
            pytest.fail("the agents did not report a measured profile and a probe in 45 s")
        token = tmp_path / "admin-token"
        token.write_text(cluster.admin_token)

        # Execute
        code = main(export_args(cluster, token, out))
        recorded = {r.id: r for r in (cluster.registry.get(d) for d in cluster.clients)}
        topology = cluster.topology

    # Assert: the replayed topology is the recorded fleet plus a server in a group of its own.
    assert code == 0
    assert f"--config-dir {out} +experiment=fl_digits topology=rec" in capsys.readouterr().out
    replay = replayed(out, "topology=rec")
    assert sorted(replay.trainers) == sorted(recorded)
    server = replay.devices[replay.server]
    assert server.group not in {r.group for r in recorded.values()}
    assert {g: replay.groups[g].description for g in {r.group for r in recorded.values()}} == {
        g: topology.groups[g].description for g in {r.group for r in recorded.values()}
    }
    for dev, record in recorded.items():
        d = replay.devices[dev]
        assert (d.description, d.group, d.id_in_group) == (
            record.description,
            record.group,
            record.id_in_group,
        )
        # The profile: kind measured, the agent's source, its step model and throughputs.
        assert record.measured is not None
        hw = d.hardware
        assert hw.kind == MEASURED and hw.source == record.measured["source"]
        assert hw.source.startswith("fedsim agent on ")
        step = record.measured["steps"]["digits_cnn"]
        assert hw.steps["digits_cnn"].overhead_s == step["overhead_s"]
        assert hw.steps["digits_cnn"].per_sample_s == step["per_sample_s"]
        # The agent timed the server-side evaluation too, and it travels likewise.
        evaluation = record.measured["eval_steps"]["digits_cnn"]
        assert hw.eval_steps["digits_cnn"].per_sample_s == evaluation["per_sample_s"] > 0
        assert hw.serialize_bytes_per_s == record.measured["serialize_bytes_per_s"]
        assert hw.load_bytes_per_s == record.measured["load_bytes_per_s"]
        assert hw.request_cpu_s == record.measured["request_cpu_s"] > 0
        assert hw.round_overhead_s == record.measured["round_overhead_s"] > 0
        # The link: the probe's slower direction, and half its round trip each way.
        res = record.resources
        slower = min(res["bandwidth_up"], res["bandwidth_down"])
        assert d.link.bandwidth == pytest.approx(slower / MBIT * 1e6 / 8, rel=1e-9)
        assert d.link.latency == pytest.approx(res["rtt"] / 2, rel=1e-9)

    # The same kinds of device as a generated fleet, at another scale.
    fleet = replayed(
        out,
        "topology=rec_fleet",
        "topology.generate.groups=4",
        "topology.generate.devices_per_group=5",
    )
    assert len(fleet.trainers) == 20
    kinds = {fleet.devices[t].hardware.name for t in fleet.trainers}
    assert kinds == {replay.devices[t].hardware.name for t in replay.trainers}


def test_a_device_without_a_measured_profile_is_refused_in_one_line(tmp_path, capsys):
    # Prepare: agents that do not calibrate (the cluster's default).
    cfg = config()
    with cluster_for(cfg, tmp_path / "run") as cluster:
        token = tmp_path / "admin-token"
        token.write_text(cluster.admin_token)

        # Execute
        with pytest.raises(SystemExit) as exit:
            main(export_args(cluster, token, tmp_path / "out"))

    # Assert
    err = capsys.readouterr().err
    assert exit.value.code == 2
    assert err.count("\n") == 1 and "has reported no measured profile" in err
    assert not (tmp_path / "out").exists()
