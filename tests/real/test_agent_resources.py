"""What the agent reports of its device: disk and network traffic as rates between heartbeats,
and the utilisation of its GPU through NVML or, without nvidia-ml-py, nvidia-smi."""

from __future__ import annotations

import logging
import stat
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from fedsim.real.agent import resources
from fedsim.real.agent.resources import GpuReader, LoadMeter, gpu_reader, io_counters

TRAFFIC = ("disk_read", "disk_write", "net_receive", "net_transmit")


def test_this_hosts_counters_are_read_and_loopback_left_out():
    # Execute
    counters = io_counters()

    # Assert: this Linux host has disks and a network interface besides lo.
    assert set(counters) == set(TRAFFIC)
    assert all(v >= 0 for v in counters.values())


def test_a_heartbeat_carries_traffic_as_rates_since_the_last_one(monkeypatch):
    # Prepare: counters and a clock the test moves.
    clock = {"t": 100.0}
    counters = {"disk_read": 0.0, "disk_write": 0.0, "net_receive": 5e6, "net_transmit": 1e6}
    monkeypatch.setattr(resources.time, "monotonic", lambda: clock["t"])
    monkeypatch.setattr(resources, "io_counters", lambda: dict(counters))
    meter = LoadMeter()
    clock["t"] = 102.0
    counters.update(disk_read=4096.0, disk_write=8e6, net_receive=7e6, net_transmit=1e6)

    # Execute
    first = meter.read()
    clock["t"] = 104.0
    counters["net_receive"] = 1.0  # went back (an interface gone): no rate, not a negative one
    second = meter.read()

    # Assert
    assert {k: first[k] for k in TRAFFIC} == {
        "disk_read": 2048.0,
        "disk_write": 4e6,
        "net_receive": 1e6,
        "net_transmit": 0.0,
    }
    assert "net_receive" not in second and second["disk_write"] == 0.0
    assert "gpu_util" not in first  # no GPU, so no figure that would read as an idle one


def test_a_heartbeat_carries_the_gpus_utilisation(monkeypatch):
    # Prepare: NVML as torch reaches it, answering in percent.
    monkeypatch.setattr(torch.cuda, "utilization", lambda index: 42)

    # Execute
    figures = LoadMeter(gpu=GpuReader(0)).read()

    # Assert
    assert figures["gpu_util"] == 0.42


def fake_nvidia_smi(tmp_path: Path, body: str) -> Path:
    script = tmp_path / "nvidia-smi"
    script.write_text(f'#!/bin/sh\necho "$@" > {tmp_path / "args"}\n{body}\n')
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


def without_nvml(monkeypatch, uuid: str) -> None:
    """torch as it is without nvidia-ml-py, on a host whose GPU 0 has ``uuid``."""

    def no_nvml(index: int) -> int:
        raise ModuleNotFoundError("nvidia-ml-py does not seem to be installed")

    monkeypatch.setattr(torch.cuda, "utilization", no_nvml)
    monkeypatch.setattr(
        torch.cuda, "get_device_properties", lambda index: SimpleNamespace(uuid=uuid)
    )


def test_without_nvml_nvidia_smi_reads_the_same_gpu_by_its_uuid(monkeypatch, tmp_path):
    # Prepare
    without_nvml(monkeypatch, "6a1e1ba4-58bb-4f3c-9d7e-000000000000")
    smi = fake_nvidia_smi(tmp_path, "echo 37")
    gpu = GpuReader(0, nvidia_smi=str(smi))

    # Execute
    utilization = gpu.utilization()

    # Assert
    assert utilization == 0.37
    args = (tmp_path / "args").read_text().split()
    assert "--id=GPU-6a1e1ba4-58bb-4f3c-9d7e-000000000000" in args
    assert "--query-gpu=utilization.gpu" in args


def test_an_unreadable_gpu_gives_no_figure_and_a_warning(monkeypatch, tmp_path, caplog):
    # Prepare: nvidia-smi fails, as it does when the driver is gone.
    without_nvml(monkeypatch, "GPU-6a1e1ba4")
    smi = fake_nvidia_smi(tmp_path, "echo 'NVIDIA-SMI has failed' >&2; exit 9")
    meter = LoadMeter(gpu=GpuReader(0, nvidia_smi=str(smi)))

    # Execute
    with caplog.at_level(logging.WARNING, logger=resources.__name__):
        figures = meter.read()

    # Assert
    assert "gpu_util" not in figures
    assert "nvidia-smi" in caplog.text
    assert "--id=GPU-6a1e1ba4" in (tmp_path / "args").read_text()


def test_without_nvml_or_nvidia_smi_the_utilisation_is_unknown(monkeypatch):
    # Prepare
    without_nvml(monkeypatch, "GPU-x")
    monkeypatch.setattr(resources.shutil, "which", lambda name: None)

    # Execute and Assert
    assert GpuReader(0).utilization() is None


@pytest.mark.skipif(torch.cuda.is_available(), reason="this host has a GPU")
def test_an_agent_that_trains_on_the_cpu_reads_no_gpu():
    assert gpu_reader("auto") is None and gpu_reader("cpu") is None
