"""Blobs stream through the server: a 50 MB version is uploaded and downloaded four times at
once without the server's memory growing by anything like the blob's size."""

from __future__ import annotations

import asyncio
import hashlib
import json
import struct
import threading
import time

import psutil
import pytest

from tests.real.conftest import ADMIN, API

pytestmark = pytest.mark.asyncio

MB = 1 << 20
SIZE = 50 * MB


def write_model(path, nbytes: int) -> str:
    """A safetensors file of ``nbytes`` zeros in 1 MB tensors, written without holding it
    whole; returns its sha256.

    Many tensors, as a real model has: the repository validates an upload one tensor at a
    time, so its own peak is the largest tensor, which is not what this test measures.
    """
    tensors = {
        f"layer{i}": {"dtype": "F32", "shape": [MB // 4], "data_offsets": [i * MB, (i + 1) * MB]}
        for i in range(nbytes // MB)
    }
    header = json.dumps(tensors).encode()
    header += b" " * (-len(header) % 8)
    digest = hashlib.sha256()
    with path.open("wb") as f:
        for piece in (struct.pack("<Q", len(header)), header):
            f.write(piece)
            digest.update(piece)
        zeros = bytes(MB)
        for _ in range(nbytes // MB):
            f.write(zeros)
            digest.update(zeros)
    return digest.hexdigest()


class PeakRss:
    """Samples this process's resident memory from a thread, independent of the event loop."""

    def __init__(self) -> None:
        self._process = psutil.Process()
        self.baseline = self._process.memory_info().rss
        self.peak = self.baseline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self._process.memory_info().rss)
            time.sleep(0.005)

    @property
    def growth(self) -> int:
        return self.peak - self.baseline


async def test_large_versions_stream_in_and_out(server, tmp_path):
    path = tmp_path / "big.safetensors"
    sha = write_model(path, SIZE)
    await server.model("big")

    with PeakRss() as upload, path.open("rb") as f:
        r = await server.client.post(f"{API}/models/big/versions", data=f, headers=ADMIN)
        assert r.status == 201, await r.text()
    assert (await r.json())["sha256"] == sha
    assert upload.growth < 50 * MB, f"upload grew RSS by {upload.growth / MB:.0f} MB"

    async def download() -> str:
        r = await server.client.get(f"{API}/models/big/versions/1/blob", headers=ADMIN)
        assert r.status == 200
        digest = hashlib.sha256()
        async for chunk in r.content.iter_chunked(256 * 1024):
            digest.update(chunk)
        return digest.hexdigest()

    with PeakRss() as downloads:
        assert await asyncio.gather(*(download() for _ in range(4))) == [sha] * 4
    assert downloads.growth < 50 * MB, f"4 downloads grew RSS by {downloads.growth / MB:.0f} MB"
