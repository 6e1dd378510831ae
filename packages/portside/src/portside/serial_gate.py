"""A gate that lets one unit of work at a time use a database.

SQLite has one writer at a time: writers wait here, where waiting is cancellable,
rather than inside the driver. In-memory SQLite is one database shared by every
connection of an app (sync and async), but its shared-cache locks fail at once
instead of waiting, so there every unit of work takes turns. And the units of work
of a test that share one outer transaction's connection take turns too.
"""

from __future__ import annotations

import threading
import time

import anyio
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

_MAX_POLL_INTERVAL = 0.005


class SerialGate:
    """A lock usable from the event loop and from worker threads alike.

    ``timeout`` mirrors the pool timeout: waiting longer raises SQLAlchemy's pool
    ``TimeoutError``, which integrations already answer with 503.
    """

    def __init__(self, timeout: float) -> None:
        self._lock = threading.Lock()
        self._timeout = timeout

    def _timed_out(self) -> PoolTimeoutError:
        return PoolTimeoutError(
            f"in-memory SQLite serves one unit of work at a time and the current one "
            f"did not finish within {self._timeout:g}s (DATABASE_POOL_TIMEOUT)"
        )

    def acquire_blocking(self) -> None:
        """Wait in this (worker) thread until the gate is ours."""
        if not self._lock.acquire(timeout=self._timeout):
            raise self._timed_out()

    async def acquire(self) -> None:
        """Wait without blocking the event loop until the gate is ours.

        Polls, because the holder may be a worker thread: parking a thread of the
        shared pool per waiter could starve the holder of the thread it needs to end.
        """
        deadline = time.monotonic() + self._timeout
        interval = 0.0005
        while not self._lock.acquire(blocking=False):
            if time.monotonic() >= deadline:
                raise self._timed_out()
            await anyio.sleep(interval)
            interval = min(interval * 2, _MAX_POLL_INTERVAL)

    def release(self) -> None:
        """Let the next unit of work in."""
        self._lock.release()
