"""A thread pool for the blocking calls handlers make: SQLite, disk, safetensors decoding.

The pool belongs to the app: it starts when the app starts and, when it stops, waits for the
calls in flight, so that nothing uses the registry or the repository after they close.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class Offload:
    """``await offload(fn, *args)`` runs ``fn`` in the pool without blocking the event loop."""

    def __init__(self, *, max_workers: int | None = None) -> None:
        self._max_workers = max_workers
        self._pool: ThreadPoolExecutor | None = None

    def start(self) -> None:
        self._pool = ThreadPoolExecutor(self._max_workers, thread_name_prefix="fedsim-server")

    async def stop(self) -> None:
        pool, self._pool = self._pool, None
        if pool is not None:
            # Waiting must not block the loop: a call in flight may be waiting on the loop
            # (an upload read through bodies.ThreadFile).
            await asyncio.to_thread(pool.shutdown, wait=True)

    async def __call__(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        if self._pool is None:
            raise RuntimeError("the server's worker pool is not running")
        call = functools.partial(fn, *args, **kwargs)
        return await asyncio.get_running_loop().run_in_executor(self._pool, call)
