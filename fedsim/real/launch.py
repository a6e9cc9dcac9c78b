"""A fedsim server and one agent process per client, on loopback: ``mode=real`` on one machine.

The server runs in a thread of this process (so the coordinator can share its task board and
repository); every agent is a separate ``fedsim agent`` process with its own data shard, as it
would be on a device. Everything is stopped on exit, agents first.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from aiohttp import web

from fedsim.core.registry import DeviceRegistry, DeviceState, UnknownDevice
from fedsim.core.repository import ModelRepository
from fedsim.core.topology import Topology
from fedsim.real.board import TaskBoard
from fedsim.real.stores import ServerStores

if TYPE_CHECKING:
    from fedsim.real.jobs import JobManager, JobRunner

log = logging.getLogger(__name__)


class ServerThread:
    """An aiohttp application served from a background thread with its own event loop."""

    def __init__(
        self,
        app: web.Application,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.app, self.host, self.port = app, host, port
        self.ssl_context = ssl_context  # serve HTTPS with it
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._serve, name="fedsim-server", daemon=True)
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        scheme = "http" if self.ssl_context is None else "https"
        return f"{scheme}://{self.host}:{self.port}"

    def start(self, timeout: float = 30.0) -> None:
        self._thread.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("the server did not start in time")
        if self._error is not None:
            raise RuntimeError(f"the server did not start: {self._error}") from self._error

    def stop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._runner = web.AppRunner(self.app)
            self._loop.run_until_complete(self._runner.setup())
            site = web.TCPSite(self._runner, self.host, self.port, ssl_context=self.ssl_context)
            self._loop.run_until_complete(site.start())
            self.port = self._runner.addresses[0][1]
        except BaseException as e:  # reported to the starting thread
            self._error = e
            self._ready.set()
            return
        self._ready.set()
        try:
            self._loop.run_forever()
        finally:
            self._loop.run_until_complete(self._runner.cleanup())
            self._loop.close()


def stop_process(proc: subprocess.Popen, *, kill: bool = False, grace_s: float = 10.0) -> None:
    """End ``proc``: SIGTERM (SIGKILL with ``kill``), then SIGKILL if it outlives ``grace_s``."""
    stop_processes([proc], kill=kill, grace_s=grace_s)


def stop_processes(
    procs: Sequence[subprocess.Popen], *, kill: bool = False, grace_s: float = 10.0
) -> None:
    """End ``procs`` as :func:`stop_process` ends one, all signalled before any is waited for,
    so that their shutdowns (an agent's flushes its state and unloads torch) overlap."""
    running = [proc for proc in procs if proc.poll() is None]
    for proc in running:
        if kill:
            proc.kill()
        else:
            proc.terminate()
    deadline = time.monotonic() + grace_s
    for proc in running:
        try:
            proc.wait(timeout=max(deadline - time.monotonic(), 0.0))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class LocalCluster:
    """The server and one agent process per client, for the duration of a ``with`` block.

    ``mode.tls`` "mutual" serves over mutual TLS: a CA, a server certificate and one client
    certificate per device are made under ``run_dir/certs`` (:mod:`fedsim.certs`), and each
    agent presents its own.
    """

    def __init__(
        self,
        *,
        run_dir: Path,
        topology: Topology,
        clients: list[int],
        shards: Mapping[int, tuple[np.ndarray, np.ndarray]] | None,
        mode: Any,
        data: str | None = None,
        agent_args: Mapping[int, Sequence[str]] | None = None,
        prometheus_url: str | None = None,
        runner: JobRunner | None = None,
        launcher: Callable[[int], Sequence[str]] | None = None,
        route: Callable[[int, str], str] | None = None,
        plugins: Sequence[str] = (),
    ) -> None:
        self.run_dir = Path(run_dir)
        self.topology = topology
        self.clients = clients
        self.shards = dict(shards or {})
        self.data = data  # the agents' --data when they have no shard (e.g. "synthetic:4")
        self.mode = mode
        self.agent_args = dict(agent_args or {})  # further `fedsim agent` options per device
        self.prometheus_url = prometheus_url  # the server's --prometheus-url
        self.admin_token = secrets.token_urlsafe(24)
        self.enrollment_token = secrets.token_urlsafe(24)
        self.viewer_token = secrets.token_urlsafe(24)  # the dashboard, read-only
        self.runner = runner  # runs the jobs posted to this cluster's server, if given
        # The command prefix a device's agent starts under (emulated mode: its namespace).
        self.launcher = launcher
        # The URL a device's agent dials, given the server's (emulated mode: a latency relay).
        self.route = route
        # Import paths of the user's models the agents may build (their --plugin options);
        # the agents inherit this process's environment, PYTHONPATH included.
        self.plugins = tuple(plugins)
        self.stores: ServerStores | None = None
        self.jobs: JobManager | None = None
        self.server: ServerThread | None = None
        self.agents: dict[int, subprocess.Popen] = {}

    def __enter__(self) -> LocalCluster:
        from fedsim.real.jobs import JobManager
        from fedsim.real.server.app import init_app
        from fedsim.real.server.config import ServerConfig

        self.stores = stores = ServerStores.open(self.run_dir, patience_s=self.mode.patience_s)
        tls = self._make_certs() if self.mode.tls == "mutual" else {}
        config = ServerConfig(
            host=self.mode.host,
            port=self.mode.port,
            data_dir=self.run_dir,
            admin_token=self.admin_token,
            enrollment_token=self.enrollment_token,
            viewer_token=self.viewer_token,
            patience_s=self.mode.patience_s,
            # Every heartbeat into the dashboard's history: local runs are short.
            history_interval_s=0.0,
            prometheus_url=self.prometheus_url,
            **tls,
        )
        if self.runner is not None:
            self.jobs = JobManager(data_dir=self.run_dir, stores=stores, runner=self.runner)
        app = init_app(
            config,
            board=stores.board,
            registry=stores.registry,
            repository=stores.repository,
            jobs=self.jobs,
        )
        self.server = ServerThread(
            app, host=self.mode.host, port=self.mode.port, ssl_context=config.ssl_context()
        )
        try:
            self.server.start()
            for dev in self.clients:
                self.start_agent(dev)
            self.wait_online(self.clients, self.mode.startup_timeout_s)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        log.info("real mode: server %s with %d agents", self.server.url, len(self.clients))
        return self

    def __exit__(self, *exc: object) -> None:
        agents = list(self.agents.values())
        self.agents.clear()
        stop_processes(agents)
        if self.server is not None:
            self.server.stop()
        if self.stores is not None:
            self.stores.close()

    @property
    def certs_dir(self) -> Path:
        """Where ``mode.tls`` "mutual" keeps the CA and the certificates."""
        return self.run_dir / "certs"

    def _make_certs(self) -> dict[str, Path]:
        """The CA and certificates of a mutual-TLS cluster; the server's TLS settings."""
        from fedsim.certs import CA_CERT, SERVER_CERT, SERVER_KEY, create, device_name

        # The agents dial mode.host; localhost and 127.0.0.1 serve a user's own clients.
        names = list(dict.fromkeys([self.mode.host, "localhost", "127.0.0.1"]))
        devices = [device_name(dev) for dev in self.clients]
        create(self.certs_dir, server_names=names, devices=devices, days=30, force=True)
        return {
            "cert_file": self.certs_dir / SERVER_CERT,
            "key_file": self.certs_dir / SERVER_KEY,
            "client_ca_file": self.certs_dir / CA_CERT,
        }

    # The stores, by name, for code that drives the cluster's server directly.
    @property
    def board(self) -> TaskBoard:
        return self._stores().board

    @property
    def repository(self) -> ModelRepository:
        return self._stores().repository

    @property
    def registry(self) -> DeviceRegistry:
        return self._stores().registry

    def _stores(self) -> ServerStores:
        if self.stores is None:
            raise RuntimeError("the cluster is not running")
        return self.stores

    def agent_dir(self, dev: int) -> Path:
        return self.run_dir / "agents" / str(dev)

    def start_agent(self, dev: int) -> subprocess.Popen:
        """Start (or restart) device ``dev``'s agent process."""
        d = self.topology.devices[dev]
        home = self.agent_dir(dev)
        home.mkdir(parents=True, exist_ok=True)
        data = home / "shard.npz"
        if dev in self.shards and not data.exists():
            X, y = self.shards[dev]
            np.savez(data, X=X, y=y)
        cmd = [
            sys.executable,
            "-m",
            "fedsim",
            "agent",
            "--server",
            self.server.url if self.route is None else self.route(dev, self.server.url),
            f"--token={self.enrollment_token}",  # "=": a token may begin with "-"
            "--device-id",
            str(dev),
            f"--description={d.description}",
            "--group",
            str(d.group),
            f"--group-description={self.topology.groups[d.group].description}",
            "--id-in-group",
            str(d.id_in_group),
            "--profile",
            d.hardware.name,
            "--state-dir",
            str(home),
            "--heartbeat-interval",
            str(self.mode.heartbeat_interval_s),
            "--poll-wait",
            "5",
            "--threads",
            "1",
            # A run's agents start training at once; a calibration would take the cores from
            # its first round. agent_args may turn it on (--calibrate).
            "--no-calibrate",
        ]
        for plugin in self.plugins:
            cmd.append(f"--plugin={plugin}")
        if self.mode.tls == "mutual":
            from fedsim.certs import CA_CERT, device_name

            name = device_name(dev)
            cmd += ["--ca", str(self.certs_dir / CA_CERT)]
            cmd += ["--cert", str(self.certs_dir / f"{name}.pem")]
            cmd += ["--key", str(self.certs_dir / f"{name}.key")]
        if data.exists():
            cmd += ["--data", str(data)]
        elif self.data is not None:
            cmd += ["--data", self.data]
        cmd += self.agent_args.get(dev, ())
        if self.launcher is not None:
            cmd = [*self.launcher(dev), *cmd]
        with open(home / "agent.log", "ab") as logfile:
            proc = subprocess.Popen(
                cmd, stdout=logfile, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        self.agents[dev] = proc
        return proc

    def stop_agent(self, dev: int, *, kill: bool = False) -> None:
        proc = self.agents.pop(dev, None)
        if proc is not None:
            stop_process(proc, kill=kill)

    def wait_online(self, devices: list[int], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        missing = list(devices)
        while time.monotonic() < deadline:
            missing = [d for d in devices if not self._online(d)]
            if not missing:
                return
            dead = [d for d in missing if d in self.agents and self.agents[d].poll() is not None]
            if dead:
                log_tail = (self.agent_dir(dead[0]) / "agent.log").read_text()[-2000:]
                raise RuntimeError(f"agent {dead[0]} exited while starting:\n{log_tail}")
            time.sleep(0.1)
        raise RuntimeError(f"agents {missing} did not come online within {timeout:g} s")

    def _online(self, dev: int) -> bool:
        try:
            return self.registry.get(dev).state in (DeviceState.ONLINE, DeviceState.BUSY)
        except UnknownDevice:
            return False
