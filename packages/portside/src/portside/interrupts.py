"""Stopping, on the database server, the statement a connection is running.

Cancelling the task that awaits a statement does not stop the statement: the
server keeps running it, holding its locks and its connection slot, until it ends
by itself. For a client that gave up (see :mod:`portside.disconnects`) portside
stops it the driver's way, from outside the code that runs it:

* asyncpg: a cancel request (asyncpg's own, the one its timeouts send), sent before
  the awaiting task is cancelled. Cancelling the task first is not enough: under
  anyio's cancellation, SQLAlchemy drops the connection and asyncpg cancels its own
  pending cancel request with it, so the statement ran on (measured: a whole
  ``pg_sleep(30)``);
* psycopg: ``Connection.cancel_safe()``, which opens its own connection for the
  request, from a worker thread of its own (it waits for the server): the thread
  running the statement gets ``QueryCanceled``;
* SQLite (pysqlite and portside's aiosqlite): ``sqlite3.Connection.interrupt()``,
  safe from any thread; the statement fails with ``interrupted``.

A PostgreSQL cancel request is a signal to the server process: one that lands after
the statement ended cancels the next statement on that connection. So a connection
a cancel request was sent on is replaced by the pool at its next checkout (it is
still held by the code that ran the statement, and ends its unit as usual). SQLite
ignores an interrupt once no statement runs. Other drivers are left alone:
cancelling the task is all portside does for them.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import weakref
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from portside.deadlines import sqlite_connection

if TYPE_CHECKING:
    from sqlalchemy import Connection

__all__: list[str] = []

#: Pool-entry flag: a cancel request was sent on this connection, whose signal may
#: still land on a later statement; its next checkout replaces it.
CANCEL_SENT = "portside_cancel_sent"

logger = logging.getLogger("portside")


# Threads of their own, per event loop: the default ones may all be busy running the
# very statements to cancel (sync handlers), and a cancel queued behind them would wait
# for them to end.
_limiters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, anyio.CapacityLimiter] = (
    weakref.WeakKeyDictionary()
)


def _limiter() -> anyio.CapacityLimiter:
    loop = asyncio.get_running_loop()
    limiter = _limiters.get(loop)
    if limiter is None:
        limiter = _limiters[loop] = anyio.CapacityLimiter(8)
    return limiter


async def interrupt(connection: Connection, limit: float) -> None:
    """Ask the server to stop what ``connection`` runs now; wait at most ``limit`` seconds.

    Never raises: a request that cannot be sent is logged (the unit's own cleanup
    and deadline remain).
    """
    if connection.closed or connection.invalidated:
        return
    driver = connection.dialect.driver
    driver_connection: Any = connection.connection.driver_connection
    try:
        with anyio.move_on_after(limit):
            if driver == "asyncpg":
                waiter = asyncio.get_running_loop().create_future()
                # Sets the waiter once the server has taken the request, or failed to.
                # The server acts on a cancel request when its signal reaches the
                # backend: if the statement ended just before, the signal cancels
                # what the connection runs next, another request's statement once
                # pooled. So the pool replaces it at its next checkout.
                connection.info[CANCEL_SENT] = True
                driver_connection._cancel_current_command(waiter)
                await waiter
            elif driver == "psycopg":
                # The thread running the statement still holds the connection: the
                # pool replaces it at its next checkout instead.
                connection.info[CANCEL_SENT] = True
                cancel = functools.partial(driver_connection.cancel_safe, timeout=limit)
                await anyio.to_thread.run_sync(cancel, abandon_on_cancel=True, limiter=_limiter())
            elif (raw := sqlite_connection(driver_connection)) is not None:
                raw.interrupt()
    except Exception:
        logger.warning("stopping a statement on the server failed", exc_info=True)


def running_connections(session: Any) -> list[Connection]:
    """The connections of ``session``'s transaction (those that may run a statement now)."""
    transaction = session.get_transaction()
    if transaction is None:
        return []
    with contextlib.suppress(Exception):  # read from another thread: a moment of change
        return [connection for connection, *_ in list(transaction._connections.values())]
    return []
