"""The bandwidth probe against links shaped with tc in network namespaces (needs root)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
import time

import pytest

needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("tc"),
    reason="shaping links needs root and iproute2 (ip, tc); CI runs as root",
)

SERVER = textwrap.dedent(
    """
    import sys
    from aiohttp import web
    from fedsim.real.server.handlers.probe import ProbeHandlers
    probe = ProbeHandlers()
    async def health(request):
        return web.json_response({"status": "ok"})
    app = web.Application()
    app.router.add_get("/api/v1/health", health)
    app.router.add_get("/api/v1/probe", probe.download)
    app.router.add_put("/api/v1/probe", probe.upload)
    web.run_app(app, host=sys.argv[1], port=int(sys.argv[2]), print=None)
    """
)

CLIENT = textwrap.dedent(
    """
    import asyncio, json, sys
    import aiohttp
    from fedsim.real.agent.probe import measure
    async def main():
        async with aiohttp.ClientSession() as s:
            r = await measure(s, sys.argv[1], headers={}, nbytes=int(sys.argv[2]))
        print(json.dumps({"up": r.up_bps, "down": r.down_bps, "rtt": r.rtt_s}))
    asyncio.run(main())
    """
)


def sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


@pytest.fixture
def shaped_link():
    """Namespaces A (server) and B (agent) joined by a veth pair: 16 Mbit/s from A to B,
    8 Mbit/s from B to A. Addresses are private to these namespaces."""
    tag = str(os.getpid())[-5:]
    a, b = f"fsA{tag}", f"fsB{tag}"
    va, vb = f"va{tag}", f"vb{tag}"
    try:
        sh("ip", "netns", "add", a)
        sh("ip", "netns", "add", b)
        sh("ip", "link", "add", va, "type", "veth", "peer", "name", vb)
        sh("ip", "link", "set", va, "netns", a)
        sh("ip", "link", "set", vb, "netns", b)
        for ns, dev, addr in ((a, va, "10.231.7.1/24"), (b, vb, "10.231.7.2/24")):
            sh("ip", "-n", ns, "addr", "add", addr, "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "-n", ns, "link", "set", "lo", "up")
        for ns, dev, rate in ((a, va, "16mbit"), (b, vb, "8mbit")):
            # A token bucket shapes each direction (netem, for delay, is not in every kernel).
            tbf = ["tbf", "rate", rate, "burst", "32kbit", "latency", "400ms"]
            sh("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", *tbf)
        yield a, b
    finally:
        subprocess.run(["ip", "netns", "del", a], capture_output=True)
        subprocess.run(["ip", "netns", "del", b], capture_output=True)


@needs_root
def test_probe_agrees_with_a_tc_shaped_link_within_10_percent(shaped_link):
    a, b = shaped_link
    server = subprocess.Popen(
        ["ip", "netns", "exec", a, sys.executable, "-c", SERVER, "10.231.7.1", "18555"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        out = None
        for _ in range(100):  # wait for the server to listen
            proc = subprocess.run(
                [
                    "ip",
                    "netns",
                    "exec",
                    b,
                    sys.executable,
                    "-c",
                    CLIENT,
                    "http://10.231.7.1:18555",
                    str(4_000_000),
                ],
                capture_output=True,
                text=True,
            )
            if proc.returncode == 0:
                out = json.loads(proc.stdout)
                break
            time.sleep(0.1)
        assert out is not None, proc.stderr
    finally:
        server.terminate()
        server.wait(timeout=10)
    print(f"probe: {out}")  # the measured figures, for the record
    # 16 Mbit/s = 2,000,000 B/s down; 8 Mbit/s = 1,000,000 B/s up; no added delay.
    assert out["down"] == pytest.approx(2_000_000, rel=0.10)
    assert out["up"] == pytest.approx(1_000_000, rel=0.10)
    assert 0 < out["rtt"] < 0.05


def test_a_round_trip_longer_than_the_transfer_does_not_inflate_the_rate():
    from fedsim.real.agent.probe import _transfer_time

    # A loopback: the median ping (2 ms) exceeds the transfer (1 ms) of the payload.
    assert _transfer_time(0.001, rtt=0.002) == 0.0005  # at most twice bytes/elapsed
    # A long link, bandwidth-bound: the round trip is taken off.
    assert _transfer_time(2.05, rtt=0.05) == pytest.approx(2.0)
