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
from collections import deque

import anyio
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from portside.errors import GateDeadlockError
from portside.event_loop import on_event_loop_thread

__all__ = ["GateHolder", "SerialGate"]

_FIRST_POLL_INTERVAL = 0.0005
_MAX_POLL_INTERVAL = 0.005


# Guards the wait-for graph: who holds which gate, who waits for which.
_graph_lock = threading.Lock()


class GateHolder:
    """Who takes gates: a unit of work. Knows the gate it waits for, if any.

    Two units that each hold a gate and wait for the other's (two SQLite databases
    written in opposite orders) would wait for each other until both time out. A
    holder about to wait looks along the chain of holders and waits instead; the
    one whose wait would close a circle fails at once with
    :class:`~portside.errors.GateDeadlockError`, and the others go on.
    """

    __slots__ = ("waiting_for",)

    def __init__(self) -> None:
        self.waiting_for: SerialGate | None = None


class SerialGate:
    """A lock usable from the event loop and from worker threads alike.

    Units on the event loop take turns first come, first served, and a release on
    the event loop hands the gate to the next of them at once. A release in a
    worker thread cannot wake them (events belong to the loop): they notice it by
    polling, at most every 5 ms.

    ``timeout`` mirrors the pool timeout: waiting longer raises SQLAlchemy's pool
    ``TimeoutError``, which integrations already answer with 503.
    """

    def __init__(self, timeout: float) -> None:
        self._lock = threading.Lock()
        self._timeout = timeout
        self._waiting: deque[anyio.Event] = deque()  # event-loop waiters, in order
        self._holder: GateHolder | None = None

    def _timed_out(self) -> PoolTimeoutError:
        return PoolTimeoutError(
            f"in-memory SQLite serves one unit of work at a time and the current one "
            f"did not finish within {self._timeout:g}s (DATABASE_POOL_TIMEOUT)"
        )

    def _start_waiting(self, holder: GateHolder | None) -> None:
        """Record that ``holder`` waits for this gate, unless that closes a circle."""
        if holder is None:
            return
        with _graph_lock:
            other = self._holder
            while other is not None:
                if other is holder:
                    raise GateDeadlockError(
                        "This unit of work holds one SQLite database's writer turn and "
                        "asked for another's, which a second unit holds while it waits for "
                        "the first: waiting would deadlock both, so this one gives up. It "
                        "rolled back and can be retried; writing several SQLite databases "
                        "in the same order everywhere avoids this."
                    )
                other = other.waiting_for._holder if other.waiting_for else None
            holder.waiting_for = self

    @staticmethod
    def _stop_waiting(holder: GateHolder | None) -> None:
        if holder is not None:
            holder.waiting_for = None

    def _taken_by(self, holder: GateHolder | None) -> None:
        self._holder = holder

    def acquire_blocking(self, holder: GateHolder | None = None) -> None:
        """Wait in this (worker) thread until the gate is ours."""
        if self._lock.acquire(blocking=False):
            self._taken_by(holder)
            return
        self._start_waiting(holder)
        try:
            if not self._lock.acquire(timeout=self._timeout):
                raise self._timed_out()
        finally:
            self._stop_waiting(holder)
        self._taken_by(holder)

    async def acquire(self, holder: GateHolder | None = None) -> None:
        """Wait without blocking the event loop until the gate is ours.

        Never parks a thread of the shared pool per waiter: that could starve the
        holder, if it is a worker thread, of the thread it needs to finish.
        """
        if not self._waiting and self._lock.acquire(blocking=False):
            self._taken_by(holder)
            return
        self._start_waiting(holder)
        try:
            await self._wait_for_turn()
        finally:
            self._stop_waiting(holder)
        self._taken_by(holder)

    async def _wait_for_turn(self) -> None:
        deadline = time.monotonic() + self._timeout
        interval = _FIRST_POLL_INTERVAL
        turn = anyio.Event()
        self._waiting.append(turn)
        acquired = False
        try:
            while True:
                if self._waiting[0] is turn and self._lock.acquire(blocking=False):
                    acquired = True
                    return
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise self._timed_out()
                with anyio.move_on_after(min(interval, remaining)):
                    await turn.wait()
                if turn.is_set():  # woken, but a worker thread may have been faster
                    index = self._waiting.index(turn)
                    turn = self._waiting[index] = anyio.Event()
                else:
                    interval = min(interval * 2, _MAX_POLL_INTERVAL)
        finally:
            self._waiting.remove(turn)
            if not acquired and self._waiting and not self._lock.locked():
                self._waiting[0].set()  # leaving the head of the line: the next one's turn

    def release(self) -> None:
        """Let the next unit of work in."""
        self._holder = None
        self._lock.release()
        if self._waiting and on_event_loop_thread():
            self._waiting[0].set()
