"""Sync sessions on an async connection: one connection, so one transaction, per database.

An app that has both engines opens async sessions on the async engine and sync
sessions (in worker threads) on the sync engine: two connections. Under a test's
outer transaction that means two transactions, so a row written by an async
endpoint is invisible to a sync one, and on SQLite the second writer waits for the
first until the busy timeout. The test kit therefore runs a database's sync
sessions on its async outer connection too (``AsyncConnection.sync_connection``).

That connection's driver is async: SQLAlchemy's adapter awaits the driver's
coroutines from a greenlet that ``greenlet_spawn`` started on the event loop. A
worker thread has no such greenlet, so :class:`BridgedDriverConnection` wraps the
driver connection: a call made outside SQLAlchemy's greenlets runs in a greenlet
of its own, and each coroutine it awaits is handed to the event loop
(running in another thread, or idle in this one: a plain ``def`` test). Units
of work take turns on the outer connection (the binding's gate), and the test's
own session runs while they do not, so one thread at a time uses it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from greenlet import getcurrent, greenlet  # type: ignore[import-untyped]
from sqlalchemy.util.concurrency import in_greenlet

from portside.event_loop import running_asyncio

__all__ = ["BridgedDriverConnection"]


class _Provider(greenlet):  # type: ignore[misc]  # greenlet's class is untyped here
    # The marker SQLAlchemy's await_() looks for on the current greenlet.
    __sqlalchemy_greenlet_provider__ = True


async def _await(awaitable: Awaitable[Any]) -> Any:
    return await awaitable


class BridgedDriverConnection:
    """A driver connection (or cursor) usable from worker threads; see the module docstring.

    ``loop`` is the event loop the connection belongs to.
    """

    def __init__(self, target: Any, loop: asyncio.AbstractEventLoop) -> None:
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_loop", loop)

    def __getattr__(self, name: str) -> Any:
        value = getattr(self._target, name)
        if not callable(value) or isinstance(value, type):
            return value

        def call(*args: Any, **kwargs: Any) -> Any:
            result = self._call(value, args, kwargs)
            return BridgedDriverConnection(result, self._loop) if name == "cursor" else result

        return call

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._target, name, value)

    def _call(self, function: Callable[..., Any], args: Any, kwargs: Any) -> Any:
        if in_greenlet() or running_asyncio():  # the event loop's thread: as usual
            return function(*args, **kwargs)
        child = _Provider(function, getcurrent())
        result = child.switch(*args, **kwargs)
        while not child.dead:
            try:
                value = self._run_on_loop(result)
            except BaseException as exc:
                result = child.throw(exc)
            else:
                result = child.switch(value)
        return result

    def _run_on_loop(self, awaitable: Awaitable[Any]) -> Any:
        if self._loop.is_running():  # in another thread: a worker's, or a sync client's
            return asyncio.run_coroutine_threadsafe(_await(awaitable), self._loop).result()
        # A plain `def` test using a session fixture, on the idle loop's own thread.
        return self._loop.run_until_complete(_await(awaitable))
