"""File system calls on the shared storage, never on the event loop, always with a timeout.

The VM folders live on an NFS mount that can hang: a ``stat`` on it may block
forever.  Every call that touches that mount goes through :class:`StorageIO`:
it runs in a small pool of its own (so hung calls cannot exhaust the default
executor that other work uses) and the caller gets :class:`StorageTimeout`
(``-48``, "storage not answering") after ``timeout`` seconds instead of
waiting with the thread.  A call that hung keeps its worker until the kernel
returns; the pool is bounded, so a dead mount costs at most ``workers``
threads, and later calls time out in the queue.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
from typing import Any, Callable, TypeVar

from .errors import Unavailable

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_WORKERS = 8
DEFAULT_TIMEOUT = 15.0


class StorageTimeout(Unavailable):
    """The shared storage did not answer in time (likely a hung NFS mount)."""


class StorageIO:
    def __init__(self, *, workers: int = DEFAULT_WORKERS, timeout: float = DEFAULT_TIMEOUT, name: str = "storage-io"):
        self.timeout = timeout
        self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name)

    async def call(self, fn: Callable[..., T], *args: Any, timeout: float | None = None, what: str | None = None, **kwargs: Any) -> T:
        """``fn(*args, **kwargs)`` in the storage pool; :class:`StorageTimeout` if it takes longer than ``timeout``."""
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(self._pool, functools.partial(fn, *args, **kwargs))
        limit = self.timeout if timeout is None else timeout
        try:
            return await asyncio.wait_for(asyncio.shield(future), limit)
        except asyncio.TimeoutError:
            label = what or getattr(fn, "__name__", "file system call")
            log.warning("storage: %s did not answer within %.0f s", label, limit)
            raise StorageTimeout(f"the storage is not answering ({label} took more than {limit:.0f} s)") from None

    def close(self) -> None:
        """Stop accepting work; threads stuck in the kernel are left to finish on their own."""
        self._pool.shutdown(wait=False, cancel_futures=True)
