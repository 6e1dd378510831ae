"""SQLite adapters (pysqlite and aiosqlite) and SQLite's safe defaults.

Every new connection gets ``foreign_keys=ON``, a busy timeout and (for files) WAL
with ``synchronous=NORMAL``; startup reads them back once. Transactions are begun
by portside, not by the driver: ``BEGIN IMMEDIATE`` for units of work that may
write, plain ``BEGIN`` for read-only ones. A deferred transaction that reads and
then writes cannot upgrade its lock once another writer committed ("database is
locked"); taking the write lock at ``BEGIN`` makes writers queue on the busy
timeout instead, while readers stay concurrent under WAL. Driving ``BEGIN``
ourselves is also SQLAlchemy's documented fix for SAVEPOINT on pysqlite/aiosqlite.
Async engines connect through :mod:`portside.adapters.aiosqlite_connection`, which
runs that ``BEGIN`` in the same trip to aiosqlite's thread as the first statement.
A read-only unit that writes anyway works while no other writer interferes; if
its write meets the lock (SQLite refuses it at once), it fails with
:class:`~portside.errors.ReadOnlyUnitWriteError`, which says why and what to do,
rather than as "database is locked", which reads as an outage.

Units of work that may write also take turns inside the process, before their
``BEGIN IMMEDIATE``: SQLite allows one writer at a time anyway, and waiting in a
cancellable gate instead of in the driver's busy handler means a cancelled request
never leaves aiosqlite's thread blocked (an aiosqlite connection cancelled there is
force-stopped and leaks its close task). Other processes still queue on the busy
timeout.

In-memory databases become one named shared-cache database per adapter pair, so
the sync and async engines of an app see the same data, kept alive by one extra
connection and entered by one unit of work at a time, readers included (shared-cache
locks fail at once instead of waiting).
"""

from __future__ import annotations

import functools
import sqlite3
import uuid
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, event
from sqlalchemy.engine import URL
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.pool import AsyncAdaptedQueuePool, QueuePool

from portside.adapters.base import AsyncAdapter, SyncAdapter
from portside.deadlines import clear_sqlite
from portside.errors import ReadOnlyUnitWriteError, StartupError
from portside.serial_gate import SerialGate
from portside.sessions import AsyncSession, Session
from portside.urls import is_sqlite_memory

if TYPE_CHECKING:
    from sqlalchemy.engine import ExceptionContext

    from portside.adapters.aiosqlite_connection import AiosqliteConnection
    from portside.settings import DatabaseSettings

__all__ = [
    "AsyncSQLiteAdapter",
    "SQLiteAdapter",
    "build_sqlite",
]

_BEGIN_OPTION = "portside_sqlite_begin"
# Marks the connections of units of work hinted read-only (``writes=False``).
_READ_ONLY_OPTION = "portside_sqlite_read_only"


def _refused_read_only_write(context: ExceptionContext) -> None:
    """Explain a write that a read-only unit's plain ``BEGIN`` could not upgrade.

    SQLite answers it with SQLITE_BUSY ("database is locked") at once, without
    waiting out the busy timeout: left as it is, it reads as an outage (503).
    """
    exc = context.original_exception
    connection = context.connection
    if not (
        isinstance(exc, sqlite3.Error)
        and exc.sqlite_errorcode & 0xFF == sqlite3.SQLITE_BUSY
        and connection is not None
        and connection.get_execution_options().get(_READ_ONLY_OPTION)
        and (context.statement or "").lstrip()[:6].upper() != "SELECT"
    ):
        return
    raise ReadOnlyUnitWriteError(
        f"A write in a read-only unit of work met SQLite's write lock ({exc}, "
        f"{exc.sqlite_errorname}). Units hinted writes=False, as the web integrations "
        "make for GET, HEAD, OPTIONS and TRACE requests, begin a plain BEGIN so that "
        "they read concurrently; once such a transaction has read, its write cannot "
        "wait for a lock another writer took. Make the change in a POST, PUT, PATCH or "
        "DELETE request, or in a unit that may write: "
        "`async with lifecycle.async_session(writes=True)` (or "
        "`lifecycle.session(writes=True)` in a worker thread)."
    ) from exc


def _install_defaults(
    engine: Engine, settings: DatabaseSettings, *, memory: bool, is_async: bool
) -> None:
    busy_ms = round(settings.sqlite_busy_timeout * 1000)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Driver-level autocommit: SQLAlchemy's "begin" event below emits BEGIN.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={busy_ms}")
            if not memory:
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA synchronous=NORMAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "reset")
    def _on_reset(dbapi_connection: Any, record: Any, _state: Any) -> None:
        # A COMMIT that SQLite refuses (a deferred constraint) leaves the transaction
        # open, and SQLAlchemy then skips its rollback-on-return: end it here, or the
        # next unit of work finds "cannot start a transaction within a transaction".
        raw = getattr(dbapi_connection, "driver_connection", dbapi_connection)  # aiosqlite's
        if raw.in_transaction:
            dbapi_connection.rollback()
        clear_sqlite(raw, record.info)  # a unit's deadline ends with the unit

    event.listen(engine, "handle_error", _refused_read_only_write)

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        statement = connection.get_execution_options().get(_BEGIN_OPTION, "BEGIN")
        driver = connection.connection.driver_connection
        if is_async:
            # Runs in the same trip to aiosqlite's thread as the first statement.
            driver.defer_begin(statement)  # type: ignore[union-attr]
            return
        try:
            driver.execute(statement)  # type: ignore[union-attr]
        except sqlite3.Error as exc:  # what exec_driver_sql would have raised
            raise DBAPIError.instance(statement, None, exc, sqlite3.Error) from exc


def _verify(connection: Connection, settings: DatabaseSettings, *, memory: bool) -> None:
    def pragma(name: str) -> Any:
        return connection.exec_driver_sql(f"PRAGMA {name}").scalar()

    expected: dict[str, Any] = {
        "foreign_keys": 1,
        "busy_timeout": round(settings.sqlite_busy_timeout * 1000),
    }
    if not memory:
        expected |= {"journal_mode": "wal", "synchronous": 1}
    actual = {name: pragma(name) for name in expected}
    actual = {k: v.lower() if isinstance(v, str) else v for k, v in actual.items()}
    refused = {name: value for name, value in actual.items() if value != expected[name]}
    if refused:
        wanted = ", ".join(f"{name}={expected[name]!r}" for name in refused)
        got = ", ".join(f"{name}={value!r}" for name, value in refused.items())
        raise StartupError(
            f"SQLite refused portside's defaults: wanted {wanted}, got {got}. "
            "Check that the database file and its directory are writable and not on "
            "a network file system (WAL needs shared memory)."
        )


class _SharedMemory:
    """One named in-memory database, alive while its keeper connection is open."""

    def __init__(self) -> None:
        self.name = f"portside-memory-{uuid.uuid4().hex}"
        self._keeper: sqlite3.Connection | None = sqlite3.connect(
            f"file:{self.name}?mode=memory&cache=shared", uri=True, check_same_thread=False
        )
        self._users = 0

    def url_for(self, url: URL) -> URL:
        query = {"mode": "memory", "cache": "shared", "uri": "true"}
        return url.set(database=f"file:{self.name}", query=query)

    def acquire(self) -> None:
        self._users += 1

    def release(self) -> None:
        self._users -= 1
        if self._users == 0:
            self.close()

    def close(self) -> None:
        if self._keeper is not None:
            self._keeper.close()
            self._keeper = None


class SQLiteAdapter(SyncAdapter):
    """Synchronous SQLite (pysqlite) with portside's defaults."""

    def __init__(
        self,
        settings: DatabaseSettings,
        url: URL,
        *,
        shared_memory: _SharedMemory | None = None,
        gate: SerialGate | None = None,
    ) -> None:
        self._memory = shared_memory
        if shared_memory is not None:
            url = shared_memory.url_for(url)
            shared_memory.acquire()
        self.gate = gate
        super().__init__(settings, url)
        writer = self.engine.execution_options(**{_BEGIN_OPTION: "BEGIN IMMEDIATE"})
        self._writer_sessionmaker = self.sessionmaker_for(writer)
        reader = self.engine.execution_options(**{_READ_ONLY_OPTION: True})
        self._reader_sessionmaker = self.sessionmaker_for(reader)

    def gate_for(self, *, writes: bool) -> SerialGate | None:
        """In memory: every unit of work takes turns; in a file: only writers do."""
        return self.gate if writes or self._memory is not None else None

    def engine_options(self) -> dict[str, Any]:
        """Queue pool for files and shared memory alike; connections may change threads."""
        options = super().engine_options() | self.pooling_options()
        options["pool_pre_ping"] = False  # a local file cannot drop the connection
        options["poolclass"] = QueuePool
        options["connect_args"] = {"check_same_thread": False}
        return options

    def configure(self, engine: Engine) -> None:
        """Install the pragmas and portside-driven BEGIN."""
        _install_defaults(engine, self.settings, memory=self._memory is not None, is_async=False)

    def new_session(self, *, writes: bool, bind: Connection | None = None) -> Session:
        """A session whose transactions begin IMMEDIATE when it may write."""
        if bind is not None:
            return super().new_session(writes=writes, bind=bind)
        return (self._writer_sessionmaker if writes else self._reader_sessionmaker)()

    def verify_connection(self, connection: Connection) -> None:
        """Read the pragmas back; raise :class:`~portside.errors.StartupError` if refused."""
        _verify(connection, self.settings, memory=self._memory is not None)

    def dispose(self) -> None:
        """Dispose the engine, then let the in-memory database go if nobody else uses it."""
        try:
            super().dispose()
        finally:
            if self._memory is not None:
                self._memory.release()


class AsyncSQLiteAdapter(AsyncAdapter):
    """Asynchronous SQLite (aiosqlite) with portside's defaults."""

    def __init__(
        self,
        settings: DatabaseSettings,
        url: URL,
        *,
        shared_memory: _SharedMemory | None = None,
        gate: SerialGate | None = None,
    ) -> None:
        self._memory = shared_memory
        if shared_memory is not None:
            url = shared_memory.url_for(url)
            shared_memory.acquire()
        self.gate = gate
        super().__init__(settings, url)
        writer = self.engine.execution_options(**{_BEGIN_OPTION: "BEGIN IMMEDIATE"})
        self._writer_sessionmaker = self.sessionmaker_for(writer)
        reader = self.engine.execution_options(**{_READ_ONLY_OPTION: True})
        self._reader_sessionmaker = self.sessionmaker_for(reader)

    def gate_for(self, *, writes: bool) -> SerialGate | None:
        """In memory: every unit of work takes turns; in a file: only writers do."""
        return self.gate if writes or self._memory is not None else None

    def engine_options(self) -> dict[str, Any]:
        """Queue pool for files and shared memory alike; portside's aiosqlite connections."""
        options = super().engine_options() | self.pooling_options()
        options["pool_pre_ping"] = False
        options["poolclass"] = AsyncAdaptedQueuePool
        options["async_creator"] = self._connect
        return options

    async def _connect(self) -> AiosqliteConnection:
        # Imported here: aiosqlite is optional (the sqlite extra), the sync adapter is not.
        from portside.adapters.aiosqlite_connection import AiosqliteConnection  # noqa: PLC0415

        args, kwargs = self.engine.dialect.create_connect_args(self.engine.url)
        # Only aiosqlite's thread runs statements; the event loop reads in_transaction.
        kwargs["check_same_thread"] = False
        connection = AiosqliteConnection(functools.partial(sqlite3.connect, *args, **kwargs))
        await connection  # starts its thread and connects there
        return connection

    def configure(self, engine: Engine) -> None:
        """Install the pragmas and portside-driven BEGIN."""
        _install_defaults(engine, self.settings, memory=self._memory is not None, is_async=True)

    def new_session(self, *, writes: bool, bind: AsyncConnection | None = None) -> AsyncSession:
        """A session whose transactions begin IMMEDIATE when it may write."""
        if bind is not None:
            return super().new_session(writes=writes, bind=bind)
        return (self._writer_sessionmaker if writes else self._reader_sessionmaker)()

    def verify_connection(self, connection: Connection) -> None:
        """Read the pragmas back; raise :class:`~portside.errors.StartupError` if refused."""
        _verify(connection, self.settings, memory=self._memory is not None)

    async def dispose(self) -> None:
        """Dispose the engine, then let the in-memory database go if nobody else uses it."""
        try:
            await super().dispose()
        finally:
            if self._memory is not None:
                self._memory.release()


def build_sqlite(
    settings: DatabaseSettings, sync_url: URL | None, async_url: URL | None
) -> tuple[SQLiteAdapter | None, AsyncSQLiteAdapter | None]:
    """Build the requested SQLite adapters, sharing one gate (and in-memory database)."""
    memory = is_sqlite_memory(sync_url or async_url)  # type: ignore[arg-type]
    shared = _SharedMemory() if memory else None
    gate = SerialGate(settings.pool_timeout)
    sync_adapter: SQLiteAdapter | None = None
    try:
        if sync_url is not None:
            sync_adapter = SQLiteAdapter(settings, sync_url, shared_memory=shared, gate=gate)
        async_adapter = (
            AsyncSQLiteAdapter(settings, async_url, shared_memory=shared, gate=gate)
            if async_url is not None
            else None
        )
    except BaseException:
        if sync_adapter is not None:
            sync_adapter.dispose()
        elif shared is not None:
            shared.close()
        raise
    return sync_adapter, async_adapter
