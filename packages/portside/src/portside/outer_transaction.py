"""One outer transaction around every unit of work, rolled back at the end: test isolation.

While an :class:`OuterTransaction` is active, every :class:`~portside.Lifecycle`
*started* in that context (an app's lifespan included: tasks inherit the context)
binds the sessions of its units of work to one connection per engine, opened on
first use, inside a transaction that is never committed. Sessions join it with
``join_transaction_mode="create_savepoint"``: their ``commit()`` releases a
SAVEPOINT, so code that commits works unchanged and still leaves nothing behind.
Units of work then run one at a time (they share each connection).

This is the mechanism behind the portside pytest plugin; it needs no help from
the web integrations because they all get their sessions from the lifecycle.
"""

from __future__ import annotations

import threading
from contextvars import ContextVar, Token
from types import TracebackType
from typing import TYPE_CHECKING, Self

import anyio
import anyio.to_thread

from portside.serial_gate import SerialGate

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

    from portside.lifecycle import Lifecycle

_active: ContextVar[OuterTransaction | None] = ContextVar(
    "portside_outer_transaction", default=None
)


def active_outer_transaction() -> OuterTransaction | None:
    """The outer transaction lifecycles started in this context join, if any."""
    return _active.get()


class OuterTransaction:
    """Make the units of work of lifecycles started while active roll back at the end.

    Use it as a context manager around starting the app (or lifecycle); the
    lifecycle rolls the outer transactions back at its shutdown.
    """

    def __init__(self, *, wait_timeout: float = 30.0) -> None:
        self._sync: dict[Engine, Connection] = {}
        self._async: dict[AsyncEngine, AsyncConnection] = {}
        self._sync_lock = threading.Lock()
        self._async_lock = anyio.Lock()
        self._token: Token[OuterTransaction | None] | None = None
        #: Units of work share the outer connections, so they take turns.
        self.gate = SerialGate(wait_timeout)
        #: Lifecycles that started while this was active, in order.
        self.lifecycles: list[Lifecycle] = []

    def __enter__(self) -> Self:
        self._token = _active.set(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        if self._token is not None:
            _active.reset(self._token)
            self._token = None

    def held_connections(self, engine: Engine) -> int:
        """How many of ``engine``'s checked-out connections are this object's (0 or 1)."""
        return int(engine in self._sync or any(e.sync_engine is engine for e in self._async))

    async def async_connection(self, engine: AsyncEngine) -> AsyncConnection:
        """The outer connection of ``engine``, begun on first use."""
        async with self._async_lock:
            connection = self._async.get(engine)
            if connection is None:
                connection = await engine.connect()
                await connection.begin()
                self._async[engine] = connection
        return connection

    def sync_connection_blocking(self, engine: Engine) -> Connection:
        """The outer connection of ``engine``, begun on first use (blocks: worker thread)."""
        with self._sync_lock:
            connection = self._sync.get(engine)
            if connection is None:
                connection = engine.connect()
                connection.begin()
                self._sync[engine] = connection
        return connection

    async def sync_connection(self, engine: Engine) -> Connection:
        """:meth:`sync_connection_blocking` without blocking the event loop."""
        return await anyio.to_thread.run_sync(self.sync_connection_blocking, engine)

    async def release_async(self, engine: AsyncEngine) -> None:
        """Roll back and close ``engine``'s outer connection, if it has one."""
        connection = self._async.pop(engine, None)
        if connection is not None:
            await connection.rollback()
            await connection.close()

    async def release_sync(self, engine: Engine) -> None:
        """Roll back and close ``engine``'s outer connection, if it has one."""
        connection = self._sync.pop(engine, None)
        if connection is not None:
            await anyio.to_thread.run_sync(_roll_back_blocking, connection)


def _roll_back_blocking(connection: Connection) -> None:
    connection.rollback()
    connection.close()
