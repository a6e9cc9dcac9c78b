"""Benchmark the fedsim server: heartbeat throughput and memory while serving big downloads.

The server runs as a ``fedsim server`` process pinned to one core (``taskset -c 0`` where it
exists); the load comes from this process on the other cores, over loopback.

1. Small endpoints: requests per second of ``PUT /devices/{id}/heartbeat`` (JSON body, token
   check, registry update) from ``--clients`` concurrent connections, against the baseline of
   ``GET /api/v1/health`` (no body, no store) measured in the same run.
2. Streaming: a ``--model-mb`` model version is uploaded, then ``--downloads`` clients fetch
   it at once; the server's peak resident memory growth is compared with what buffering every
   download in memory would cost (downloads x model size).

    python benchmarks/bench_server.py [--seconds 5] [--model-mb 250] [--downloads 8]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import aiohttp
import numpy as np
import psutil

from fedsim.store.safetensors_io import encode

ADMIN, ENROLL = "bench-admin-token", "bench-enrollment-token"


def start_server(data_dir: Path, port: int) -> subprocess.Popen:
    cmd = [
        sys.executable,
        "-m",
        "fedsim",
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        "--log-level",
        "WARNING",
    ]
    if shutil.which("taskset"):
        cmd = ["taskset", "-c", "0", *cmd]
    env = {**os.environ, "FEDSIM_ADMIN_TOKEN": ADMIN, "FEDSIM_ENROLLMENT_TOKEN": ENROLL}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


async def wait_up(base: str) -> None:
    async with aiohttp.ClientSession() as s:
        for _ in range(300):
            try:
                async with s.get(f"{base}/api/v1/health") as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("server did not start")


async def rate(
    base: str,
    clients: int,
    seconds: float,
    method: str,
    path: str,
    headers: dict,
    body: dict | None,
) -> float:
    """Requests per second that ``clients`` concurrent connections get through."""
    done = 0
    stop = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=clients)
    async with aiohttp.ClientSession(connector=connector) as s:

        async def worker() -> None:
            nonlocal done
            while time.monotonic() < stop:
                async with s.request(method, base + path, headers=headers, json=body) as r:
                    await r.read()
                    assert r.status == 200, r.status
                done += 1

        start = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(clients)))
        return done / (time.monotonic() - start)


async def register(base: str) -> tuple[int, str]:
    async with (
        aiohttp.ClientSession() as s,
        s.post(
            f"{base}/api/v1/devices",
            headers={"Authorization": f"Bearer {ENROLL}"},
            json={"description": "bench", "group": 1},
        ) as r,
    ):
        data = await r.json()
    return data["device"]["id"], data["token"]


async def upload_model(base: str, mb: int) -> str:
    arrays = {f"w{i}": np.ones(250_000, np.float32) for i in range(mb)}  # 1 MB each
    blob = encode(arrays)
    admin = {"Authorization": f"Bearer {ADMIN}"}
    async with aiohttp.ClientSession() as s:
        async with s.post(
            f"{base}/api/v1/models", headers=admin, json={"name": "big", "architecture": "bench"}
        ) as r:
            assert r.status == 201, await r.text()
        async with s.post(f"{base}/api/v1/models/big/versions", headers=admin, data=blob) as r:
            assert r.status == 201, await r.text()
    return f"{base}/api/v1/models/big/versions/1/blob"


async def download_all(url: str, n: int, token: str) -> int:
    async with aiohttp.ClientSession() as s:

        async def one() -> int:
            got = 0
            async with s.get(url, headers={"Authorization": f"Bearer {token}"}) as r:
                async for chunk in r.content.iter_chunked(1 << 20):
                    got += len(chunk)
            return got

        return sum(await asyncio.gather(*(one() for _ in range(n))))


def peak_rss(proc: psutil.Process, stop: threading.Event, out: list[int]) -> None:
    while not stop.is_set():
        out.append(proc.memory_info().rss)
        time.sleep(0.02)


async def main_async(args: argparse.Namespace) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="fedsim-bench-"))
    port = args.port
    base = f"http://127.0.0.1:{port}"
    server = start_server(data_dir, port)
    try:
        await wait_up(base)
        device, token = await register(base)
        health = await rate(base, args.clients, args.seconds, "GET", "/api/v1/health", {}, None)
        beat = await rate(
            base,
            args.clients,
            args.seconds,
            "PUT",
            f"/api/v1/devices/{device}/heartbeat",
            {"Authorization": f"Bearer {token}"},
            {"resources": {"cpu_busy": 0.2, "memory_available": 1e9}},
        )
        print(
            f"heartbeat: {beat:,.0f} req/s on one core; health baseline {health:,.0f} req/s; "
            f"ratio {beat / health:.2f}"
        )

        url = await upload_model(base, args.model_mb)
        proc = psutil.Process(server.pid)
        children = proc.children(recursive=True)
        target = children[0] if children and shutil.which("taskset") else proc
        before = target.memory_info().rss
        samples: list[int] = []
        stop = threading.Event()
        watcher = threading.Thread(target=peak_rss, args=(target, stop, samples))
        watcher.start()
        start = time.monotonic()
        total = await download_all(url, args.downloads, token)
        elapsed = time.monotonic() - start
        stop.set()
        watcher.join()
        growth = max(samples) - before
        naive = args.downloads * args.model_mb * 1e6
        print(
            f"{args.downloads} concurrent downloads of {args.model_mb} MB: {total / 1e6:,.0f} MB "
            f"in {elapsed:.1f} s; server RSS grew {growth / 1e6:,.1f} MB "
            f"({growth / naive:.3%} of the {naive / 1e6:,.0f} MB that buffering would take)"
        )
    finally:
        server.terminate()
        server.wait(timeout=30)
        shutil.rmtree(data_dir, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--clients", type=int, default=32)
    ap.add_argument("--model-mb", type=int, default=250)
    ap.add_argument("--downloads", type=int, default=8)
    ap.add_argument("--port", type=int, default=18473)
    asyncio.run(main_async(ap.parse_args()))


if __name__ == "__main__":
    main()
