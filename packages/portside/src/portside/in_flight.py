"""Counting the units of work in flight, so shutdown can wait for them.

Units end on the event loop and in worker threads alike, so the count is guarded
by a thread lock and shutdown polls it instead of waiting on an event.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

import anyio

__all__ = [
    "InFlight",
]

_POLL_INTERVAL = 0.01


class InFlight:
    """Admits units of work while open; ``refusal`` makes the error once closed."""

    def __init__(self, refusal: Callable[[], Exception]) -> None:
        self._refusal = refusal
        self._lock = threading.Lock()
        self._count = 0
        self._open = False

    @property
    def count(self) -> int:
        """Units admitted and not yet left."""
        return self._count

    def open(self) -> None:
        """Start admitting units."""
        with self._lock:
            self._open = True

    def close(self) -> None:
        """Refuse every later :meth:`enter` (units already in keep running)."""
        with self._lock:
            self._open = False

    def enter(self) -> None:
        """Admit one unit, or raise the refusal if closed."""
        with self._lock:
            if not self._open:
                raise self._refusal()
            self._count += 1

    def leave(self) -> None:
        """One admitted unit has ended."""
        with self._lock:
            self._count -= 1

    async def wait_until_empty(self, limit: float) -> int:
        """Wait up to ``limit`` seconds for every unit to leave; return how many remain."""
        with anyio.move_on_after(limit):
            while self._count:  # noqa: ASYNC110 - units also leave from worker threads
                await anyio.sleep(_POLL_INTERVAL)
        return self._count
