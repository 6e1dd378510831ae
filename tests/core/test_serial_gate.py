"""The gate SQLite writers (and in-memory units) pass: in order, handed over at once."""

from __future__ import annotations

import threading

import anyio
import anyio.lowlevel
import anyio.to_thread
import pytest
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from portside.serial_gate import SerialGate

pytestmark = pytest.mark.anyio


async def steps(count: int) -> None:
    """Let the event loop run ``count`` times; no time passes for a sleeping waiter."""
    for _ in range(count):
        await anyio.lowlevel.checkpoint()


async def test_a_release_hands_the_gate_to_the_waiters_in_order_without_polling() -> None:
    gate = SerialGate(timeout=5)
    await gate.acquire()
    entered: list[int] = []

    async def waiter(number: int) -> None:
        await gate.acquire()
        entered.append(number)
        gate.release()

    async with anyio.create_task_group() as group:
        for number in range(3):
            group.start_soon(waiter, number)
            await steps(2)  # queued before the next one arrives
        assert entered == []
        gate.release()
        # A few scheduler steps, far shorter than the first poll interval (0.5 ms):
        # only a direct hand-over gets every waiter in by then.
        await steps(20)
        assert entered == [0, 1, 2]


async def test_a_release_in_a_worker_thread_is_noticed() -> None:
    gate = SerialGate(timeout=5)
    gate.acquire_blocking()
    entered = threading.Event()

    async def waiter() -> None:
        await gate.acquire()
        entered.set()
        gate.release()

    async with anyio.create_task_group() as group:
        group.start_soon(waiter)
        await steps(2)
        await anyio.to_thread.run_sync(gate.release)
    assert entered.is_set()


async def test_a_waiter_that_gives_up_leaves_the_line() -> None:
    gate = SerialGate(timeout=5)
    await gate.acquire()
    entered: list[str] = []

    async def second() -> None:
        await gate.acquire()
        entered.append("second")
        gate.release()

    async with anyio.create_task_group() as group:
        async with anyio.create_task_group() as impatient:
            impatient.start_soon(gate.acquire)  # first in line...
            await steps(2)
            group.start_soon(second)
            await steps(2)
            impatient.cancel_scope.cancel()  # ...gives up while the gate is still held
        gate.release()
        await steps(20)
    assert entered == ["second"]


async def test_waiting_longer_than_the_timeout_fails_like_an_exhausted_pool() -> None:
    gate = SerialGate(timeout=0.05)
    await gate.acquire()
    with pytest.raises(PoolTimeoutError, match=r"did not finish within 0\.05s"):
        await gate.acquire()
    gate.release()
    await gate.acquire()  # free again
