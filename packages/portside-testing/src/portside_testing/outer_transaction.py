"""One outer transaction around every unit of work, rolled back at the end: test isolation.

An :class:`OuterTransaction` is a :class:`portside.ConnectionBinding`: while it is
active (``with OuterTransaction() as outer:``), every :class:`~portside.Lifecycle`
*started* in that context (an app's lifespan included: tasks inherit the context)
opens the sessions of its units of work on one connection per engine, opened on
first use, inside a transaction that is never committed. Sessions join it with
``join_transaction_mode="create_savepoint"``: their ``commit()`` releases a
SAVEPOINT, so code that commits works unchanged and still leaves nothing behind.
Units of work then take turns (they share each connection).

A database with both engines has ONE outer connection, the async engine's: its
sync sessions run on it too (:mod:`portside_testing.shared_connection`), so a row
an async endpoint writes is what a sync endpoint reads, in the same transaction.

This is the mechanism behind the portside pytest plugin; the web integrations know
nothing of it, because they all get their sessions from the lifecycle.
"""

from __future__ import annotations

import asyncio
import threading
from contextlib import ExitStack
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import anyio
import anyio.to_thread

from portside import Database, Lifecycle, SerialGate, use_binding
from portside.event_loop import running_asyncio
from portside_testing.shared_connection import BridgedDriverConnection

if TYPE_CHECKING:
    from collections.abc import Sequence

    from sqlalchemy import Connection, Engine
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

__all__ = ["OuterTransaction"]


class OuterTransaction:
    """Make the units of work of lifecycles started while active roll back at the end.

    Use it as a context manager around starting the app (or lifecycle); each
    lifecycle rolls its outer transactions back at its shutdown.
    """

    def __init__(self, *, wait_timeout: float = 30.0) -> None:
        self._sync: dict[Engine, Connection] = {}
        self._async: dict[AsyncEngine, AsyncConnection] = {}
        self._bridged: dict[AsyncEngine, tuple[Any, Any]] = {}  # fairy, driver connection
        self._loops: dict[Lifecycle, asyncio.AbstractEventLoop] = {}
        self._sync_lock = threading.Lock()
        self._async_lock = anyio.Lock()
        self._stack = ExitStack()
        #: Units of work share the outer connections, so they take turns.
        self.gate: SerialGate | None = SerialGate(wait_timeout)
        #: Lifecycles that started while this was active, in order.
        self.lifecycles: list[Lifecycle] = []

    def __enter__(self) -> Self:
        self._stack.enter_context(use_binding(self))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stack.close()

    # -- the binding -------------------------------------------------------------------

    def lifecycle_started(self, lifecycle: Lifecycle) -> None:
        """Remember ``lifecycle``, for the leak checks and the test's teardown."""
        self.lifecycles.append(lifecycle)
        if running_asyncio():  # sync sessions reach its async connections through it
            self._loops[lifecycle] = asyncio.get_running_loop()

    async def async_connection(self, engine: AsyncEngine) -> AsyncConnection:
        """The outer connection of ``engine``, begun on first use."""
        async with self._async_lock:
            connection = self._async.get(engine)
            if connection is None:
                connection = await engine.connect()
                await connection.begin()
                self._async[engine] = connection
        return connection

    def sync_connection(self, engine: Engine) -> Connection:
        """The outer connection of ``engine``, begun on first use (blocks: worker thread).

        For a database that also has an async engine, that is the async engine's
        outer connection (see the module docstring).
        """
        found = self._async_partner(engine)
        if found is not None:
            partner, loop = found
            if running_asyncio():
                raise RuntimeError("sync_connection() blocks: call it from a worker thread")
            bridged = asyncio.run_coroutine_threadsafe(self._bridged_connection(partner), loop)
            return bridged.result()
        with self._sync_lock:
            connection = self._sync.get(engine)
            if connection is None:
                connection = engine.connect()
                connection.begin()
                self._sync[engine] = connection
        return connection

    async def lifecycle_stopping(self, databases: Sequence[Database]) -> list[str]:
        """Roll back and close the outer connections of a stopping lifecycle's ``databases``."""
        errors: list[str] = []
        for database in databases:
            try:
                if "async" in database.kinds:
                    await self._release_async(database.async_engine)
                if "sync" in database.kinds:
                    await self._release_sync(database.engine)
            except Exception as exc:
                errors.append(
                    f"database {database.name!r}: rolling back the outer transaction failed: "
                    f"{database.redact(f'{type(exc).__name__}: {exc}'.splitlines()[0])}"
                )
        return errors

    def _async_partner(
        self, engine: Engine
    ) -> tuple[AsyncEngine, asyncio.AbstractEventLoop] | None:
        """The async engine of ``engine``'s database, and its loop, if it has one."""
        for lifecycle in self.lifecycles:
            loop = self._loops.get(lifecycle)
            if loop is None or not lifecycle.running:
                continue
            for name in lifecycle.names:
                database = lifecycle.database(name)
                if set(database.kinds) == {"sync", "async"} and database.engine is engine:
                    return database.async_engine, loop
        return None

    async def _bridged_connection(self, engine: AsyncEngine) -> Connection:
        connection = await self.async_connection(engine)
        if engine not in self._bridged:
            fairy = connection.sync_connection.connection  # type: ignore[union-attr]
            driver = fairy.dbapi_connection
            fairy.dbapi_connection = BridgedDriverConnection(driver, asyncio.get_running_loop())
            self._bridged[engine] = (fairy, driver)
        assert connection.sync_connection is not None
        return connection.sync_connection

    # -- for the test kit --------------------------------------------------------------

    def held_connections(self, engine: Engine) -> int:
        """How many of ``engine``'s checked-out connections are this object's (0 or 1)."""
        return int(engine in self._sync or any(e.sync_engine is engine for e in self._async))

    async def sync_connection_async(self, engine: Engine) -> Connection:
        """:meth:`sync_connection` without blocking the event loop."""
        found = self._async_partner(engine)
        if found is not None:
            return await self._bridged_connection(found[0])
        return await anyio.to_thread.run_sync(self.sync_connection, engine)

    async def _release_async(self, engine: AsyncEngine) -> None:
        connection = self._async.pop(engine, None)
        bridged = self._bridged.pop(engine, None)
        if bridged is not None:  # the pool gets its own driver connection back
            fairy, driver = bridged
            fairy.dbapi_connection = driver
        if connection is not None:
            await connection.rollback()
            await connection.close()

    async def _release_sync(self, engine: Engine) -> None:
        connection = self._sync.pop(engine, None)
        if connection is not None:
            await anyio.to_thread.run_sync(_roll_back_blocking, connection)


def _roll_back_blocking(connection: Connection) -> None:
    connection.rollback()
    connection.close()
