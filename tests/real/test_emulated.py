"""``mode=emulated``: links shaped between network namespaces, CPU quotas, and cleanup.

Needs root, iproute2 and the cgroup cpu controller (CI runs as root); the refusal without root
is checked everywhere.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from topologies import grouped, hardware, link

from fedsim.core.calibration import StepModel
from fedsim.core.topology import MEASURED, with_speeds_scaled
from fedsim.real import cpu_probe, emulate
from fedsim.runtimes.emulated import host_drift

ROOT = Path(__file__).resolve().parents[2]
PAYLOAD = 2_000_000  # bytes through the 8 Mbit/s link: 2 s each way

needs_root = pytest.mark.skipif(
    os.geteuid() != 0
    or not shutil.which("ip")
    or not shutil.which("tc")
    or not (
        (emulate.CGROUP_V1 / "cpu.cfs_quota_us").exists()
        or (emulate.CGROUP_V2 / "cgroup.controllers").exists()
    ),
    reason="emulation needs root, iproute2 (ip, tc) and the cgroup cpu controller; CI is root",
)


def leftovers(tag: str) -> dict[str, list[str]]:
    """Whatever with emulation ``tag``'s prefix is still on this host."""
    mark = f"{emulate.PREFIX}{tag}"
    namespaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    qdiscs = subprocess.run(["tc", "qdisc", "show"], capture_output=True, text=True).stdout
    root, _ = emulate.cgroup_root()
    cgroups = [str(p) for p in (root / emulate.CGROUP_PARENT).glob(f"{mark}*")]
    state = [str(p) for p in emulate.STATE_DIR.glob(f"{tag}.json")]
    return {
        "namespaces": [line for line in namespaces.splitlines() if mark in line],
        "links": [line for line in links.splitlines() if mark in line],
        "qdiscs": [line for line in qdiscs.splitlines() if mark in line],
        "cgroups": cgroups,
        "state": state,
    }


def nothing_left(tag: str) -> bool:
    return not any(leftovers(tag).values())


def two_agents(access_mbps: float = 1000.0):
    """A server and agents 1 and 2 in group 1; the agents' own links at ``access_mbps``."""
    return grouped(
        {1: 1, 2: 1},
        access=link("access", access_mbps / 8),
        client_hardware=lambda d: hardware("cli", 0.01),
    )


@contextlib.contextmanager
def serving(address: str, handler: type[BaseHTTPRequestHandler]) -> Iterator[int]:
    """An HTTP server of ``handler`` on ``address`` (a free port, which it yields), in a
    thread, shut down on leaving."""
    httpd = ThreadingHTTPServer((address, 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()


class Sink(BaseHTTPRequestHandler):
    """PUT reads the body sent, then answers 204; nothing is logged."""

    def do_PUT(self) -> None:
        left = int(self.headers["Content-Length"])
        while left:
            left -= len(self.rfile.read(min(left, 65536)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


class Bytes(Sink):
    """GET sends PAYLOAD bytes; PUT reads the body sent."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(PAYLOAD))
        self.end_headers()
        chunk = b"\0" * 65536
        for start in range(0, PAYLOAD, len(chunk)):
            self.wfile.write(chunk[: PAYLOAD - start])


CLIENT = textwrap.dedent(
    """
    import http.client, json, sys, time
    host, port, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    c = http.client.HTTPConnection(host, port, timeout=60)
    c.request("GET", "/")
    r = c.getresponse()
    start = time.perf_counter()  # the first bytes are here: time the body only
    body = r.read()
    down = time.perf_counter() - start
    assert len(body) == n
    c = http.client.HTTPConnection(host, port, timeout=60)
    c.connect()
    start = time.perf_counter()
    c.request("PUT", "/", body=b"\\0" * n)
    c.getresponse().read()
    up = time.perf_counter() - start
    print(json.dumps({"down_s": down, "up_s": up}))
    """
)


def timed_as_agent(net: emulate.Emulation, dev: int, script: str, *args: str) -> dict:
    """What ``script`` (Python, printing one JSON object) printed, run as agent ``dev``: in
    its cgroup and namespace."""
    proc = subprocess.run(
        [*net.launcher(dev), sys.executable, "-c", script, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


@needs_root
def test_an_emulated_link_carries_a_transfer_in_the_time_its_rate_allows():
    # Prepare: agents' own links at 8 Mbit/s goodput (1,000,000 B/s), the rest effectively free.
    plan = emulate.plan(two_agents(access_mbps=8.0), [1, 2], host_flops=1e12, cores=2)
    with emulate.Emulation(plan) as net, serving(net.server_address, Bytes) as port:
        # Execute: agent 1 downloads then uploads PAYLOAD bytes from its namespace.
        took = timed_as_agent(net, 1, CLIENT, net.server_address, str(port), str(PAYLOAD))
    # Assert: 2,000,000 B at 1,000,000 B/s takes 2 s each way.
    print(f"8 Mbit/s link, {PAYLOAD} B: {took}")  # the measured figures, for the record
    assert took["down_s"] == pytest.approx(2.0, rel=0.10)
    assert took["up_s"] == pytest.approx(2.0, rel=0.10)


@needs_root
def test_agents_behind_one_uplink_share_it_evenly():
    # Prepare: agents 1 and 2 behind their group's 8 Mbit/s uplink (1,000,000 B/s of
    # goodput), their own links fast.
    topology = grouped(
        {1: 1, 2: 1},
        uplink=link("wan", 1.0),
        access=link("access", 125.0),
        client_hardware=lambda d: hardware("cli", 0.01),
    )
    plan = emulate.plan(topology, [1, 2], host_flops=1e12, cores=2)
    took: dict[int, dict] = {}
    with emulate.Emulation(plan) as net, serving(net.server_address, Bytes) as port:
        # Execute: both download PAYLOAD bytes at once, then upload as much at once.
        def run(dev: int) -> None:
            took[dev] = timed_as_agent(
                net, dev, CLIENT, net.server_address, str(port), str(PAYLOAD)
            )

        threads = [threading.Thread(target=run, args=(dev,)) for dev in (1, 2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    # Assert: each gets half the uplink each way, as max-min sharing has it: 2,000,000 B at
    # 500,000 B/s, 4 s, for both (where one queue for both let one flow finish well first).
    print(f"two agents, one 8 Mbit/s uplink, {PAYLOAD} B each: {took}")
    for way in ("down_s", "up_s"):
        assert took[1][way] == pytest.approx(4.0, rel=0.15), took
        assert took[2][way] == pytest.approx(4.0, rel=0.15), took


@needs_root
def test_setup_then_teardown_leaves_nothing_behind():
    # Prepare
    plan = emulate.plan(two_agents(), [1, 2], host_flops=1e11, cores=2)
    # Execute
    with emulate.Emulation(plan) as net:
        net.apply_quotas()
        during = leftovers(net.tag)
        quota = net.quota(1)
        net.lift_quotas()
        lifted = net.quota(1)
    # Assert: it was all there (qdiscs of namespaces are listed by their namespace's tc)...
    assert during["namespaces"] and during["links"] and during["cgroups"] and during["state"]
    assert quota == pytest.approx(0.1)  # 10 GFLOP/s on a 100 GFLOP/s core
    assert lifted == math.inf  # agents stop unthrottled
    # ...and none of it is left.
    assert nothing_left(net.tag), leftovers(net.tag)


SET_UP_AND_HANG = textwrap.dedent(
    """
    import subprocess, sys, time
    sys.path.insert(0, sys.argv[1])
    from topologies import grouped
    from fedsim.real import emulate
    plan = emulate.plan(grouped({1: 1}), [1], host_flops=1e12, cores=1)
    net = emulate.Emulation(plan).__enter__()
    net.apply_quotas()
    agent = subprocess.Popen([*net.launcher(1), "sleep", "600"])
    print(net.tag, agent.pid, flush=True)
    time.sleep(600)
    """
)


def run_and_kill(script: str) -> tuple[str, str]:
    """Run ``script`` (which prints its emulation's tag and a pid, then hangs), SIGKILL it once
    it has printed, and return the two."""
    owner = subprocess.Popen(
        [sys.executable, "-c", script, str(ROOT / "tests")], stdout=subprocess.PIPE, text=True
    )
    assert owner.stdout is not None
    tag, pid = owner.stdout.readline().split()
    owner.send_signal(signal.SIGKILL)
    owner.wait(timeout=10)
    return tag, pid


@needs_root
def test_the_next_start_removes_what_a_killed_run_left():
    # Prepare: a process sets up an emulation, starts an "agent" in it, and is SIGKILLed.
    tag, agent_pid = run_and_kill(SET_UP_AND_HANG)
    assert not nothing_left(tag)
    # Execute: the next start.
    plan = emulate.plan(two_agents(), [1, 2], host_flops=1e12, cores=2)
    with emulate.Emulation(plan):
        # Assert: the killed run's namespaces, links, cgroups, state and agent are gone.
        assert nothing_left(tag), leftovers(tag)
        assert not Path(f"/proc/{agent_pid}").exists() or _zombie(int(agent_pid))


def _zombie(pid: int) -> bool:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"


class Echo(Sink):
    """GET answers a few bytes; PUT reads the body sent, then answers."""

    protocol_version = "HTTP/1.1"  # keep-alive: requests after the first reuse the connection

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")


TIMED_REQUESTS = textwrap.dedent(
    """
    import http.client, json, sys, time
    from urllib.parse import urlsplit
    url, n = urlsplit(sys.argv[1]), int(sys.argv[2])
    c = http.client.HTTPConnection(url.hostname, url.port, timeout=60)
    c.connect()  # the relay answers a connect at once: only requests are timed
    start = time.perf_counter()
    c.request("GET", "/")
    assert c.getresponse().read() == b"ok"
    get = time.perf_counter() - start
    start = time.perf_counter()
    c.request("PUT", "/", body=b"\\0" * n)
    c.getresponse().read()
    put = time.perf_counter() - start
    print(json.dumps({"get_s": get, "put_s": put}))
    """
)
ONE_WAY_S = 0.1  # the agents' own links' latency: a 200 ms round trip


@needs_root
def test_the_latency_relay_holds_each_request_and_response_for_the_links_latency():
    # Prepare: agents' own links at 8 Mbit/s goodput (1,000,000 B/s) with 100 ms of latency,
    # delayed by the relay (as on a kernel without netem).
    topology = grouped(
        {1: 1, 2: 1},
        access=link("access", 1.0, latency_s=ONE_WAY_S),
        client_hardware=lambda d: hardware("cli", 0.01),
    )
    plan = emulate.plan(topology, [1, 2], host_flops=1e12, cores=2)
    with emulate.Emulation(plan, use_netem=False) as net, serving(net.server_address, Echo) as port:
        direct = f"http://{net.server_address}:{port}"
        url = net.route(1, direct)
        described = net.describe()
        # Execute: agent 1, from its namespace, a short GET, then a PUT of 1 MB.
        took = timed_as_agent(net, 1, TIMED_REQUESTS, url, "1000000")
    # Assert: each request and each response waits one 100 ms one-way delay; the PUT's body
    # also takes its 1 s at the link's rate.
    print(f"relay, 100 ms each way: {took}")  # the measured figures, for the record
    assert described["latency_mechanism"] == "relay"
    assert described["one_way_delay_s"]["1"] == {"up": ONE_WAY_S, "down": ONE_WAY_S}
    assert url != direct
    assert took["get_s"] == pytest.approx(2 * ONE_WAY_S, rel=0.10)
    assert took["put_s"] == pytest.approx(2 * ONE_WAY_S + 1.0, rel=0.10)
    assert nothing_left(net.tag), leftovers(net.tag)
    assert net.relay is None


@needs_root
def test_paths_faster_than_the_relays_threshold_go_straight_to_the_server():
    # Prepare: without netem, agents 1 ms one way from the server, under the 5 ms threshold.
    topology = grouped({1: 1}, access=link("access", 1.0, latency_s=0.001))
    plan = emulate.plan(topology, [1], host_flops=1e12, cores=1)
    url = "http://10.0.0.1:8080"
    # Execute
    with emulate.Emulation(plan, use_netem=False) as net:
        routed, described = net.route(1, url), net.describe()
    # Assert: no relay runs; the run says latency was not emulated, so its prediction drops it.
    assert routed == url and net.relay is None
    assert described["latency_mechanism"] == "none"
    assert not described["latency_and_loss_emulated"]
    assert nothing_left(net.tag), leftovers(net.tag)


START_RELAY_AND_HANG = textwrap.dedent(
    """
    import sys, time
    sys.path.insert(0, sys.argv[1])
    from topologies import grouped
    from fedsim.real import emulate
    plan = emulate.plan(grouped({1: 1}), [1], host_flops=1e12, cores=1)
    net = emulate.Emulation(plan, use_netem=False, relay_min_delay_s=0.0).__enter__()
    net.route(1, f"http://{net.server_address}:9")
    print(net.tag, net.relay.pid, flush=True)
    time.sleep(600)
    """
)


@needs_root
def test_the_next_start_ends_the_latency_relay_of_a_killed_run():
    # Prepare: a process sets up an emulation with a latency relay, and is SIGKILLed.
    tag, relay_pid = run_and_kill(START_RELAY_AND_HANG)
    assert Path(f"/proc/{relay_pid}").exists() and not _zombie(int(relay_pid))
    # Execute: the next start.
    plan = emulate.plan(two_agents(), [1, 2], host_flops=1e12, cores=2)
    with emulate.Emulation(plan):
        # Assert: the killed run's relay is gone with its namespaces, links and cgroups.
        assert nothing_left(tag), leftovers(tag)
        assert not Path(f"/proc/{relay_pid}").exists() or _zombie(int(relay_pid))


@needs_root
def test_fl_digits_runs_emulated_through_the_cli(tmp_path: Path):
    # Prepare: the CPU trainer at its profile's full peak, so its quota is not the least
    # the kernel allows (a GTX 1080 is 22 times an i7 at efficiency 0.25).
    cmd = [
        sys.executable,
        "-m",
        "fedsim",
        "+experiment=fl_digits",
        "mode=emulated",
        "fl.rounds=2",
        "hardware.client_i7_cpu.efficiency=1.0",
        f"hydra.run.dir={tmp_path}",
    ]
    root, version = emulate.cgroup_root()
    # Execute: run it, and look for an agent held by a quota while it runs.
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    held: list[tuple[str, str, float]] = []
    while proc.poll() is None and not held:
        held = _held_agents(root, version)
        time.sleep(0.2)
    _, err = proc.communicate(timeout=300)
    # Assert
    assert proc.returncode == 0, err.decode()[-3000:]
    assert held, "no agent process was seen under a CPU quota"
    assert any("fedsim agent" in cmdline for _, cmdline, _ in held)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["mode"] == "emulated"
    assert summary["rounds_aggregated"] == 2
    emulation = json.loads((tmp_path / "emulation.json").read_text())
    assert emulation["slowdown_factor"] >= 1.0
    # The run states its slow-down factor and compares its rounds with the prediction slowed
    # by it.
    assert summary["emulation"]["slowdown_factor"] == emulation["slowdown_factor"]
    assert summary["fidelity"]["pairs"] == 2
    report = (tmp_path / "report.md").read_text()
    assert "mode=emulated ran every device" in report
    # ... and what the quotas cost the agents' steps, which the prediction charged.
    assert "the agents' training steps cost" in report
    assert set(emulation["cpu_quota_cores"]) == {"3", "4", "8"}
    quotas = {round(q, 3) for _, _, q in held}
    assert quotas <= {round(q, 3) for q in emulation["cpu_quota_cores"].values()}
    # How each agent fared under its quota is recorded: the CFS periods it ran in, those it
    # was throttled in and for how long, and the processor seconds it used.
    # Each agent runs in slices of 2 ms: its period is its quota's 2 ms of processor.
    for dev, cores in emulation["cpu_quota_cores"].items():
        assert emulation["cpu_period_s"][dev] == emulate.cfs_period_us(cores) / 1e6
        assert cores * emulation["cpu_period_s"][dev] == pytest.approx(2e-3, rel=1e-3)
    # What the quotas cost each agent's training step was measured as they took hold: a
    # probe per agent, timed together, against one alone.
    probe = emulation["cpu_probe"]
    assert probe["alone_step_cpu_s"] > 0
    assert set(emulation["cpu_inflation"]) == set(probe["step_cpu_s"]) == {"3", "4", "8"}
    for dev, x in emulation["cpu_inflation"].items():
        assert x == pytest.approx(probe["step_cpu_s"][dev] / probe["alone_step_cpu_s"])
        assert probe["steps"][dev] >= cpu_probe.MIN_STEPS
    assert set(emulation["cpu"]) == {"3", "4", "8"}
    for stats in emulation["cpu"].values():
        assert stats["nr_periods"] > 0 and stats["cpu_s"] > 0
        assert 0 <= stats["nr_throttled"] <= stats["nr_periods"] and stats["throttled_s"] >= 0
    tag = held[0][0]
    assert nothing_left(tag), leftovers(tag)


def _held_agents(root: Path, version: int) -> list[tuple[str, str, float]]:
    """(emulation tag, command line, cores) of each process in a cgroup with a quota set."""
    held = []
    for group in (root / emulate.CGROUP_PARENT).glob(f"{emulate.PREFIX}*/d*"):
        try:
            if version == 2:
                quota, period = (group / "cpu.max").read_text().split()
                cores = -1.0 if quota == "max" else int(quota) / int(period)
            else:
                quota_us = int((group / "cpu.cfs_quota_us").read_text())
                cores = quota_us / int((group / "cpu.cfs_period_us").read_text())
            pids = (group / "cgroup.procs").read_text().split()
        except (OSError, ValueError):
            continue  # made or removed while we looked
        for pid in pids if cores > 0 else []:
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            held.append((group.parent.name[len(emulate.PREFIX) :], cmdline, cores))
    return held


def test_without_root_the_mode_refuses_with_one_line(tmp_path: Path):
    # Prepare: the CLI with the effective user id made not root.
    script = (
        "import os, sys; os.geteuid = lambda: 1000; sys.argv[0] = 'fedsim'; "
        "from fedsim.__main__ import main; main()"
    )
    # Execute
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            "+experiment=fl_digits",
            "mode=emulated",
            f"hydra.run.dir={tmp_path}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    # Assert
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: mode=emulated needs root"), lines[0]


def test_a_profile_faster_than_the_host_slows_quotas_and_links_by_one_factor():
    # Prepare: agent 1 is worth 3 of this host's cores, agent 2 one; the host has 2.
    speed = {1: 0.3, 2: 0.1}  # TFLOP/s, on a host core of 100 GFLOP/s
    topology = grouped(
        {1: 1, 2: 1},
        access=link("access", 10.0, latency_s=0.002),
        client_hardware=lambda d: hardware("cli", speed[d]),
    )
    # Execute
    plan = emulate.plan(topology, [1, 2], host_flops=1e11, cores=2)
    shaped = emulate.shaping(topology.devices[1].link, plan.factor)
    # Assert: one core at most per agent sets the factor (3), above the cores' bound (4 / 2).
    assert plan.factor == pytest.approx(3.0)
    assert plan.quotas == pytest.approx({1: 1.0, 2: 1 / 3})
    assert shaped.rate_bps == pytest.approx(10e6 * 8 * emulate.FRAME_OVERHEAD / 3)
    assert shaped.delay_s == pytest.approx(0.006)
    assert plan.describe()["slowdown_factor"] == pytest.approx(3.0)


def test_each_quota_runs_in_slices_of_2_ms_within_the_kernels_bounds():
    # Prepare: shares from a full core down to below what a 1 s period can hold at 2 ms.
    shares = [1.0, 0.5, 0.25, 0.1, 0.04, 0.01, 0.002, 0.0001]
    # Execute
    periods = [emulate.cfs_period_us(q) for q in shares]
    # Assert: 2 ms of processor per period, the period within the kernel's 1 ms to 1 s.
    assert periods == [2_000, 4_000, 8_000, 20_000, 50_000, 200_000, 1_000_000, 1_000_000]
    with pytest.raises(ValueError, match="> 0 cores"):
        emulate.cfs_period_us(0.0)


def test_host_drift_is_the_step_alone_against_what_each_quota_assumed():
    # Prepare: on a 100 GFLOP/s host core, agent 1's profile is worth 0.5 core and measured
    # a step of 8 samples at 1 ms + 8 x 0.25 ms = 3 ms (so the host's step, as measured, was
    # 1.5 ms); agent 2 runs twice as fast as its profile of 0.25 core (the same step, 0.75 ms
    # of the host's); agent 3's spec-sheet profile has no step model of the workload.
    steps = {"cnn": StepModel(overhead_s=0.001, per_sample_s=0.00025)}
    profiles = {
        1: replace(hardware("measured", 0.05), kind=MEASURED, steps=steps),
        2: replace(hardware("measured", 0.025), kind=MEASURED, steps=steps),
        3: hardware("sheet", 0.05),
    }
    topology = grouped({1: 1, 2: 1, 3: 1}, client_hardware=lambda d: profiles[d])
    topology = with_speeds_scaled(topology, {2: 2.0})
    plan = emulate.plan(topology, [1, 2, 3], host_flops=1e11, cores=2)
    workload = cpu_probe.Workload("cnn", 8, 10, batch_size=8)
    # Execute: a probe alone took 1.8 ms a step.
    drift = host_drift(plan, workload, alone_step_s=0.0018)
    # Assert: 1.8 ms against 0.5 x 3 ms, and against 0.5 x 1.5 ms (agent 2's share doubled
    # with its speed, its step halved); none for the spec-sheet profile.
    assert plan.shares == pytest.approx({1: 0.5, 2: 0.5, 3: 0.5})
    assert drift == pytest.approx({1: 1.2, 2: 2.4})
