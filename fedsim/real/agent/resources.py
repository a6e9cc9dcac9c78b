"""What the agent tells the server about its device: the hardware once, the load in heartbeats."""

from __future__ import annotations

from typing import Any

import psutil

from fedsim.real.agent.probe import ProbeResult


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


class LoadMeter:
    """The device's load now, for a heartbeat, plus what the agent measured doing its work.

    ``cpu_busy`` is the fraction of CPU time used since the previous reading (psutil measures
    between calls, so the first reading primes it). ``bandwidth_down``/``bandwidth_up`` (bytes/s)
    come from the last model download and upload, ``throughput`` (samples/s) from the last
    training; each appears once measured.
    """

    # A transfer this small is mostly latency; its rate says little about the link.
    MIN_TRANSFER_BYTES = 64 * 1024

    def __init__(self) -> None:
        psutil.cpu_percent(interval=None)
        self.busy = False
        self._measured: dict[str, float] = {}

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
        return {
            "cpu_busy": psutil.cpu_percent(interval=None) / 100.0,
            "memory_available": float(psutil.virtual_memory().available),
            "load1": psutil.getloadavg()[0],
            "busy": 1.0 if self.busy else 0.0,
            **self._measured,
        }
