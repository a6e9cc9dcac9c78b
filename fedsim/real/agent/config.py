"""The agent's settings (:class:`AgentConfig`) and the forms of ``--data`` (:class:`DataSpec`).

Nothing here imports torch or aiohttp, so the command line can check its arguments (and print
its help) without loading either.
"""

from __future__ import annotations

import os
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from fedsim.core.plugins import allowed, is_dotted_name, is_import_path
from fedsim.ml.spec import MODELS  # a table of names: loads no torch

MAX_POLL_WAIT = 60  # the protocol caps a long poll's ``wait`` at 60 s
# A task's transfers are as large as the server says; this is where the agent stops believing
# it. A model is held in memory whole, so this is also the most memory a download takes.
DEFAULT_MAX_TRANSFER_BYTES = 8 << 30
SYNTHETIC_PREFIX = "synthetic:"


@dataclass(frozen=True, kw_only=True)
class DataSpec:
    """Where the device's training data comes from.

    ``npz``: a file with arrays ``X`` (float, ``(n, channels, size, size)``) and ``y`` (class
    indices); ``folder``: an ImageNet-style tree read by ``ImageFolderDataset``; ``synthetic``:
    ``count`` random images shaped by the task's ``input_size`` and ``num_classes``.
    """

    kind: Literal["npz", "folder", "synthetic"]
    path: Path | None = None
    count: int = 0


def parse_data_spec(text: str) -> DataSpec:
    """``--data``'s value as a :class:`DataSpec`; ``ValueError`` with a one-line reason."""
    if text.startswith(SYNTHETIC_PREFIX):
        count = text.removeprefix(SYNTHETIC_PREFIX)
        if not count.isdigit() or int(count) < 1:
            raise ValueError(f"--data {text!r}: expected synthetic:N with N >= 1 samples")
        return DataSpec(kind="synthetic", count=int(count))
    path = Path(text).expanduser()
    if path.is_dir():
        return DataSpec(kind="folder", path=path)
    if path.is_file():
        if path.suffix.lower() != ".npz":
            raise ValueError(f"--data {text!r}: a file must be an .npz with arrays X and y")
        return DataSpec(kind="npz", path=path)
    raise ValueError(f"--data {text!r}: no such file or directory")


def check_npz(text: str, path: Path) -> None:
    """``ValueError`` naming ``--data``'s ``text`` unless ``path`` is an .npz archive holding
    arrays ``X`` and ``y``: read from the archive's directory, not the arrays, so that a wrong
    file stops the agent at its start rather than failing every task it is given."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = set(archive.namelist())
    except (OSError, zipfile.BadZipFile) as e:
        raise ValueError(f"--data {text!r}: not an .npz archive ({e})") from None
    missing = [k for k in ("X", "y") if f"{k}.npy" not in names]
    if missing:
        raise ValueError(f"--data {text!r}: no array {' or '.join(missing)} (needs X and y)")


def parse_labels(items: list[str]) -> dict[str, str]:
    """``["k=v", ...]`` as a dict; ``ValueError`` for an item without ``=`` or with no key."""
    labels = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"--label {item!r}: expected KEY=VALUE")
        labels[key.strip()] = value
    return labels


def default_state_dir() -> Path:
    """``$XDG_STATE_HOME/fedsim/agent``, else ``~/.local/state/fedsim/agent``."""
    base = os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state"
    return Path(base) / "fedsim" / "agent"


@dataclass(frozen=True, kw_only=True)
class AgentConfig:
    """Everything an :class:`~fedsim.real.agent.agent.Agent` is told; checked on construction.

    ``server`` is the server's base URL (``http://host:port``; a trailing ``/api/v1`` is
    accepted). ``enrollment_token`` may be None when ``state_dir`` holds a device token from an
    earlier run. ``device_id`` None lets the server assign one. ``data`` is ``--data``'s text
    (see :func:`parse_data_spec`), None for a device that only runs timing-only work;
    ``input_size`` overrides the task's for an image folder. ``poll_wait`` is whole seconds, as
    the protocol's ``?wait=``. ``torch_device`` "auto" trains on
    the GPU when torch sees one. ``retry_base`` and ``retry_cap`` shape the backoff between
    retries of a failed request (full jitter). ``metrics_port`` > 0 serves the agent's
    Prometheus metrics on ``metrics_host:metrics_port``; 0 serves none. ``node_exporter`` is
    the URL of the node_exporter beside the agent (its path defaults to ``/metrics``), declared
    at registration so that Prometheus finds it through the server's service discovery.
    ``calibrate`` makes the agent measure its device for ``calibrate_model`` after it registers
    and report the profile; a request from the server is answered whatever ``calibrate`` says.
    ``calibrate_model`` is a zoo model, or a user's model by import path under ``plugins``,
    timed at ``calibrate_input_size`` and ``calibrate_num_classes`` (a zoo model: the zoo's).
    ``max_transfer_bytes`` bounds each transfer a task asks for (a model download, an update,
    training data): a task asking for more fails. ``plugins`` are the import paths (packages,
    modules or the models themselves) under which a task may name a user's model; the agent
    imports no other code a task names. ``cafile`` verifies an https server;
    ``cert_file`` and ``key_file`` are this device's client certificate and key, presented to
    a server that requires mutual TLS.
    """

    server: str
    state_dir: Path
    enrollment_token: str | None = None
    device_id: int | None = None
    description: str = ""
    group: int | None = None
    group_description: str = ""
    id_in_group: int | None = None
    profile: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    data: str | None = None
    input_size: int | None = None
    heartbeat_interval: float = 5.0
    poll_wait: int = 25
    cafile: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    insecure: bool = False
    threads: int | None = None
    torch_device: str = "auto"
    retry_base: float = 0.5
    retry_cap: float = 10.0
    metrics_host: str = "127.0.0.1"
    metrics_port: int = 0
    probe_interval: float = 60.0
    probe_bytes: int = 256 * 1024
    max_transfer_bytes: int = DEFAULT_MAX_TRANSFER_BYTES
    node_exporter: str | None = None
    calibrate: bool = True
    calibrate_model: str = "digits_cnn"
    calibrate_input_size: int | None = None
    calibrate_num_classes: int | None = None
    plugins: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        url = urlsplit(self.server)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"--server {self.server!r}: expected http(s)://HOST[:PORT]")
        if self.device_id is not None and self.device_id < 0:
            raise ValueError(f"--device-id must be >= 0, got {self.device_id}")
        if not self.heartbeat_interval > 0:
            raise ValueError(f"--heartbeat-interval must be > 0, got {self.heartbeat_interval}")
        if not 1 <= self.poll_wait <= MAX_POLL_WAIT:
            raise ValueError(f"--poll-wait must be 1..{MAX_POLL_WAIT} s, got {self.poll_wait}")
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {self.threads}")
        if self.input_size is not None and self.input_size < 1:
            raise ValueError(f"--input-size must be >= 1, got {self.input_size}")
        if self.cafile is not None and self.insecure:
            raise ValueError("--ca and --insecure contradict each other; pass one")
        for option, value in (
            ("--ca", self.cafile),
            ("--cert", self.cert_file),
            ("--key", self.key_file),
        ):
            if value is not None and not Path(value).is_file():
                raise ValueError(f"{option} {value!r}: no such file")
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("a client certificate needs both --cert and --key")
        if self.cert_file is not None and url.scheme != "https":
            raise ValueError(
                f"--cert: a client certificate needs an https --server, got {url.scheme}"
            )
        if not (0 < self.retry_base <= self.retry_cap):
            raise ValueError("retry_base must be > 0 and <= retry_cap")
        if self.probe_interval < 0:
            raise ValueError(f"--probe-interval must be >= 0, got {self.probe_interval}")
        if not 0 < self.probe_bytes <= 64 * 1024 * 1024:
            raise ValueError(
                f"--probe-bytes must be in 1..{64 * 1024 * 1024}, got {self.probe_bytes}"
            )
        if self.max_transfer_bytes < 1:
            raise ValueError(f"--max-transfer-bytes must be >= 1, got {self.max_transfer_bytes}")
        if self.node_exporter is not None:
            ne = urlsplit(self.node_exporter)
            if ne.scheme not in ("http", "https") or not ne.hostname or ne.query:
                raise ValueError(
                    f"--node-exporter {self.node_exporter!r}: expected "
                    "http(s)://HOST:PORT[/PATH], e.g. http://10.0.0.5:9100/metrics"
                )
        if not 0 <= self.metrics_port <= 65535:
            raise ValueError(f"--metrics-port must be 0..65535, got {self.metrics_port}")
        if self.data is not None:
            spec = parse_data_spec(self.data)
            if spec.kind == "npz" and spec.path is not None:
                check_npz(self.data, spec.path)
        for plugin in self.plugins:
            if not is_dotted_name(plugin):
                raise ValueError(f"--plugin {plugin!r}: expected an import path, e.g. mypkg")
        for option, value in (
            ("--calibrate-input-size", self.calibrate_input_size),
            ("--calibrate-num-classes", self.calibrate_num_classes),
        ):
            if value is not None and value < 1:
                raise ValueError(f"{option} must be >= 1, got {value}")
        self._check_calibrate_model()

    def _check_calibrate_model(self) -> None:
        """A zoo model, or an import path under a ``--plugin`` with the shape to time it at.

        Only the path is checked here (nothing is imported before the agent runs); the
        calibration resolves it as a task's model is (``check_model_allowed``).
        """
        model = self.calibrate_model
        if model in MODELS:
            return
        zoo = ", ".join(sorted(MODELS))
        if not is_import_path(model):
            raise ValueError(
                f"--calibrate-model {model!r}: not a model of the zoo ({zoo}) nor an import "
                "path under a --plugin"
            )
        if not allowed(model, self.plugins):
            given = ", ".join(self.plugins) or "none given"
            raise ValueError(
                f"--calibrate-model {model!r}: not under this agent's --plugin paths "
                f"({given}); the agent imports no other code"
            )
        if self.calibrate_input_size is None or self.calibrate_num_classes is None:
            raise ValueError(
                f"--calibrate-model {model!r}: a model named by import path needs "
                "--calibrate-input-size and --calibrate-num-classes (those its workload "
                "trains at)"
            )

    @property
    def calibrate_shape(self) -> tuple[int, int] | None:
        """``(input size, class count)`` to time a user's model at; None when not given."""
        if self.calibrate_input_size is None or self.calibrate_num_classes is None:
            return None
        return self.calibrate_input_size, self.calibrate_num_classes

    @property
    def data_spec(self) -> DataSpec | None:
        return None if self.data is None else parse_data_spec(self.data)
