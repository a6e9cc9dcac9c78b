"""What the agent tells the server about its device: the hardware once, the load in heartbeats,
and the GPU it trains on, when it has one."""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from typing import Any

import psutil

from fedsim.real.agent.probe import ProbeResult

log = logging.getLogger(__name__)

LOOPBACK = "lo"  # traffic that never leaves the device: not counted as network traffic
NVIDIA_SMI_TIMEOUT_S = 5.0


def hardware() -> dict[str, Any]:
    """``cpu_count``, ``memory_bytes`` and, when torch sees a GPU, ``gpu`` (its name)."""
    described: dict[str, Any] = {
        "cpu_count": psutil.cpu_count(logical=True) or 1,
        "memory_bytes": psutil.virtual_memory().total,
    }
    import torch  # here, not at the top: the CLI's --help should not pay for loading torch

    if torch.cuda.is_available():
        described["gpu"] = torch.cuda.get_device_name(0)
    return described


def io_counters() -> dict[str, float]:
    """Bytes since boot: ``disk_read`` and ``disk_write`` over the whole disks (psutil leaves
    partitions out of its totals), ``net_receive`` and ``net_transmit`` over every network
    interface but loopback. A counter the host does not expose (a container without
    ``/proc/diskstats``) is left out."""
    counters: dict[str, float] = {}
    disk = psutil.disk_io_counters()
    if disk is not None:
        counters["disk_read"] = float(disk.read_bytes)
        counters["disk_write"] = float(disk.write_bytes)
    nics = {name: c for name, c in psutil.net_io_counters(pernic=True).items() if name != LOOPBACK}
    if nics:
        counters["net_receive"] = float(sum(c.bytes_recv for c in nics.values()))
        counters["net_transmit"] = float(sum(c.bytes_sent for c in nics.values()))
    return counters


class GpuReader:
    """Memory in use and utilisation of the one GPU the agent trains on (CUDA index ``index``).

    Utilisation is NVML's ``utilization.gpu``: the share of the last sample period (1/6 s to
    1 s, by GPU) in which a kernel ran, as ``nvidia-smi`` shows it. It is read through
    ``torch.cuda.utilization`` when the ``nvidia-ml-py`` package is installed, else by running
    ``nvidia-smi`` for this GPU (found by its UUID, so ``CUDA_VISIBLE_DEVICES`` cannot make it
    read another); with neither it is None.
    """

    def __init__(self, index: int, *, nvidia_smi: str | None = None) -> None:
        self.index = index
        self._nvml = True  # until torch says nvidia-ml-py is missing
        self._smi = nvidia_smi
        self._smi_id: str | None = None

    def memory_used(self) -> float:
        """Bytes in use on the GPU, by every process. Raises RuntimeError on a CUDA error."""
        import torch

        free, total = torch.cuda.mem_get_info(self.index)
        return float(total - free)

    def utilization(self) -> float | None:
        """The GPU's busy share (0..1) over its last sample period, or None when it cannot
        be read."""
        if self._nvml:
            import torch

            try:
                return torch.cuda.utilization(self.index) / 100.0
            except ModuleNotFoundError:  # no nvidia-ml-py: nvidia-smi reads the same counter
                self._nvml = False
                self._smi = self._smi or shutil.which("nvidia-smi")
            except Exception as e:  # NVML's errors derive from Exception alone
                log.warning("could not read the GPU's utilisation through NVML: %s", e)
                return None
        if self._smi is None:
            return None
        return self._from_nvidia_smi(self._smi)

    def _from_nvidia_smi(self, command: str) -> float | None:
        if self._smi_id is None:
            import torch

            uuid = str(torch.cuda.get_device_properties(self.index).uuid)
            self._smi_id = uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"
        try:
            answer = subprocess.run(
                [
                    command,
                    "--query-gpu=utilization.gpu",
                    "--format=csv,noheader,nounits",
                    f"--id={self._smi_id}",
                ],
                capture_output=True,
                text=True,
                timeout=NVIDIA_SMI_TIMEOUT_S,
                check=True,
            )
            return float(answer.stdout.split()[0]) / 100.0
        except (OSError, subprocess.SubprocessError, ValueError, IndexError) as e:
            log.warning("could not read the GPU's utilisation with %s: %s", command, e)
            return None


def gpu_reader(torch_device: str) -> GpuReader | None:
    """A reader of the GPU ``torch_device`` names (``auto`` as the trainer resolves it), or
    None when the agent trains on no GPU. Only that GPU is read: reading another would open a
    CUDA context, and take its memory, on a GPU the agent does not use."""
    import torch

    from fedsim.real.agent.work import resolve_torch_device

    device = torch.device(resolve_torch_device(torch_device))
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return GpuReader(0 if device.index is None else device.index)


class LoadMeter:
    """The device's load now, for a heartbeat, plus what the agent measured doing its work.

    ``cpu_busy`` is the fraction of CPU time used since the previous reading (psutil measures
    between calls, so the first reading primes it); ``disk_read``, ``disk_write``,
    ``net_receive`` and ``net_transmit`` (bytes/s, see :func:`io_counters`) are rates since the
    previous reading, from the second reading on; ``gpu_util`` (0..1) comes from ``gpu`` when
    the agent trains on a GPU and it can be read. ``bandwidth_down``/``bandwidth_up`` (bytes/s)
    come from the last model download and upload, ``throughput`` (samples/s) from the last
    training; each appears once measured.
    """

    # A transfer this small is mostly latency; its rate says little about the link.
    MIN_TRANSFER_BYTES = 64 * 1024

    def __init__(self, *, gpu: GpuReader | None = None) -> None:
        psutil.cpu_percent(interval=None)
        self.busy = False
        self._gpu = gpu
        self._measured: dict[str, float] = {}
        self._io = (time.monotonic(), io_counters())

    def transfer(self, key: str, nbytes: int, seconds: float) -> None:
        """Record a transfer of ``nbytes`` that took ``seconds`` as ``key`` (bytes/s)."""
        if nbytes >= self.MIN_TRANSFER_BYTES and seconds > 0:
            self._measured[key] = nbytes / seconds

    def probed(self, result: ProbeResult) -> None:
        """The bandwidth probe's figures replace what transfers measured in passing."""
        self._measured.update(result.resources())

    def trained(self, samples: int, seconds: float) -> None:
        if seconds > 0:
            self._measured["throughput"] = samples / seconds

    def read(self) -> dict[str, float]:
        """The figures of a heartbeat. Blocks for as long as reading the GPU takes (an
        ``nvidia-smi`` run, without NVML): call it off the event loop."""
        figures = {
            "cpu_busy": psutil.cpu_percent(interval=None) / 100.0,
            "memory_available": float(psutil.virtual_memory().available),
            "load1": psutil.getloadavg()[0],
            "busy": 1.0 if self.busy else 0.0,
            **self._io_rates(),
            **self._measured,
        }
        if self._gpu is not None and (utilization := self._gpu.utilization()) is not None:
            figures["gpu_util"] = utilization
        return figures

    def _io_rates(self) -> dict[str, float]:
        (then, before), now, after = self._io, time.monotonic(), io_counters()
        self._io = (now, after)
        if now <= then:
            return {}
        # A counter that went back (a NIC removed, a wrap) gives no rate rather than a negative.
        return {
            key: (after[key] - before[key]) / (now - then)
            for key in after.keys() & before.keys()
            if after[key] >= before[key]
        }
