"""PostgreSQL adapters: psycopg 3 (sync) and asyncpg (async).

Defaults: a queue pool sized from the settings, recycling, a bounded connect
timeout so startup and pool refills cannot hang, and, when a connection is checked
out, as few round trips as keep every guarantee (:class:`_Checkout`):

- ``pool_pre_ping``: a connection the server or a proxy dropped is replaced instead
  of failing the request. Checked for free first: a connection the server closed
  (restart, failover, ``pg_terminate_backend``, an idle timeout) has its goodbye
  waiting on the socket, which asyncpg has already read and psycopg's socket shows
  without a round trip. A real ping (``SELECT 1``) runs only for a connection idle
  for ``pool_pre_ping_idle`` seconds or more (a dropped network path says nothing),
  one whose socket has something to say, or one that was idle in the pool when
  another connection of the pool was lost. Otherwise the first statement of the
  checkout goes out unchecked, and if it fails because the connection was lost
  (not a timeout, not in autocommit), it is run once more on a new connection: in
  a transaction, a lost connection's statement was rolled back with it.
- ``pgbouncer``: no named prepared statement outlives its transaction, so PgBouncer
  in transaction pooling can hand each transaction a different server connection.
  psycopg never prepares (``prepare_threshold=None``); asyncpg keeps no statement
  cache (``statement_cache_size=0``, SQLAlchemy's ``prepared_statement_cache_size=0``)
  and names each statement uniquely, so two clients sharing a server connection
  never collide. The checkout statement below is unprepared either way.
- ``reset_session_state``: a connection on which a statement ran that may have
  changed its session state (:mod:`portside.session_state`: ``SET``, ``SET ROLE``,
  ``set_config(..., false)``, ``LISTEN``, temporary tables, unknown functions...)
  is reset (:data:`RESET_SESSION_STATE`) when it is next checked out, in the round
  trip that also pings it, so a request's ``SET`` never reaches the next request
  that borrows the same connection. A connection nothing changed is not reset.

A read-only transaction error (SQLSTATE 25006: a primary demoted to a standby, a
database switched to read-only) is treated like a lost connection: the pool is
invalidated and the next checkout connects afresh, to the new primary.

Every wait on the server is bounded, so a network that drops packets (sockets open,
nothing coming back) costs a request its 503 and never hangs it, nor shutdown:

- opening a connection: ``connect_timeout`` (a timeout is an ``OperationalError``);
- the checkout statement (ping or reset): ``connect_timeout``; a connection that
  does not answer it is dropped and replaced, as a dead one is;
- each statement, commit included: ``statement_timeout`` (asyncpg's
  ``command_timeout``; for psycopg, whose waits run in Python, a bound on each of
  the connection's waits, :func:`bounded_psycopg_connection`). The connection is
  then closed, after a cancel request that may take ``cleanup_timeout``: what it
  was doing is unknown. The error is an ``OperationalError`` of an invalidated
  connection, which the integrations answer with 503; the connections that were
  idle in the pool meanwhile are pinged at their next checkout;
- rollback: ``cleanup_timeout`` (psycopg here; asyncpg by the unit of work's
  bounded cleanup), and closing a connection: ``cleanup_timeout`` (asyncpg's close
  is otherwise unbounded, or SQLAlchemy's fixed 2 seconds when invalidating);
- disposal at shutdown: ``cleanup_timeout`` in all (:meth:`Database.dispose
  <portside.Database.dispose>`), then the pooled asyncpg connections still open
  are terminated (:meth:`AsyncPostgreSQLAdapter.terminate`), which never waits.

``statement_timeout`` is the client giving up. Unlike PostgreSQL's own
``statement_timeout`` it stops the statement on the server only if the cancel
request gets there, which a partition prevents.
"""

from __future__ import annotations

import contextlib
import functools
import math
import select
import time
import uuid
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
from sqlalchemy import event
from sqlalchemy.engine.interfaces import ExecuteStyle
from sqlalchemy.exc import DBAPIError, DisconnectionError

from portside.adapters.base import AsyncAdapter, SyncAdapter
from portside.internals import await_
from portside.interrupts import CANCEL_SENT
from portside.session_state import may_change_session_state

if TYPE_CHECKING:
    import psycopg
    from psycopg.abc import PQGen
    from sqlalchemy import Connection, Engine
    from sqlalchemy.engine import URL, Dialect, ExceptionContext
    from sqlalchemy.engine.interfaces import DBAPICursor, ExecutionContext
    from sqlalchemy.pool import ConnectionPoolEntry

    from portside.settings import DatabaseSettings

__all__ = [
    "PING",
    "READ_ONLY_SQLSTATE",
    "RESET_SESSION_STATE",
    "AsyncPostgreSQLAdapter",
    "PostgreSQLAdapter",
    "bounded",
    "bounded_psycopg_connection",
    "build_postgresql",
]

_T = TypeVar("_T")


# libpq URL parameters asyncpg rejects, and where asyncpg takes them instead.
_LIBPQ_SERVER_SETTINGS = ("application_name",)
_LIBPQ_SSLMODE = "sslmode"

#: SQLSTATE of "cannot execute ... in a read-only transaction".
READ_ONLY_SQLSTATE = "25006"

#: What ``reset_session_state`` runs when a connection whose session state may have
#: changed is checked out, in one round trip outside any transaction (it pings, too):
#: ``DISCARD ALL`` minus ``DEALLOCATE ALL``, ``DISCARD PLANS`` and ``DISCARD
#: SEQUENCES``, which would pull prepared statements from under asyncpg's and
#: psycopg's statement caches.
RESET_SESSION_STATE = (
    "CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; UNLISTEN *; "
    "SELECT pg_advisory_unlock_all(); DISCARD TEMP"
)
#: The checkout's ping, for a connection that may be dead.
PING = "SELECT 1"


def _read_only_is_a_disconnect(context: ExceptionContext) -> None:
    """Invalidate the pool on a read-only error: the server was probably demoted."""
    if getattr(context.original_exception, "sqlstate", None) == READ_ONLY_SQLSTATE:
        context.is_disconnect = True


def serve_as_replica(engine: Engine) -> None:
    """Keep ``engine``'s pool on a read-only error: on a standby it means a write was tried.

    The failover rule above (a read-only error means a demoted primary) is wrong for
    an engine that reads from a replica by design.
    """
    if event.contains(engine, "handle_error", _read_only_is_a_disconnect):
        event.remove(engine, "handle_error", _read_only_is_a_disconnect)


def wal_position(connection: Connection, query: str) -> str | None:
    """Run ``query`` (one LSN value) on ``connection``'s driver, outside any transaction.

    Used right after a COMMIT, on the connection that committed, before it goes back
    to the pool: one round trip, and nothing begun that a rollback would have to end.
    """
    driver = connection.connection.driver_connection
    if connection.dialect.driver == "asyncpg":
        value = await_(driver.fetchval(query))  # type: ignore[union-attr]
    else:
        dbapi = connection.connection.dbapi_connection
        autocommit = dbapi.autocommit  # type: ignore[union-attr]
        dbapi.autocommit = True  # type: ignore[union-attr]
        try:
            row = driver.execute(query).fetchone()  # type: ignore[union-attr]
        finally:
            dbapi.autocommit = autocommit  # type: ignore[union-attr]
        value = row[0] if row else None
    return None if value is None else str(value)


def _unique_statement_name() -> str:
    return f"__asyncpg_{uuid.uuid4().hex}__"


def _no_answer(seconds: float, setting: str) -> str:
    return (
        f"no answer from the database server within {seconds:g}s ({setting}); "
        "the connection was closed"
    )


def _connect_within_timeout(settings: DatabaseSettings) -> Any:
    """A ``do_connect`` listener: a connection attempt that times out is an OperationalError.

    asyncpg raises a bare ``TimeoutError``, which SQLAlchemy passes on untranslated.
    """

    def connect(dialect: Dialect, _record: Any, cargs: Any, cparams: Any) -> Any:
        try:
            return dialect.connect(*cargs, **cparams)
        except TimeoutError as exc:
            dbapi = dialect.loaded_dbapi
            seconds = settings.connect_timeout
            raise dbapi.OperationalError(
                f"could not connect within {seconds:g}s (DATABASE_CONNECT_TIMEOUT)"
            ) from exc

    return connect


def _statement_timeout_is_a_disconnect(settings: DatabaseSettings) -> Any:
    """A ``handle_error`` listener for asyncpg, whose bounded waits raise ``TimeoutError``.

    The statement (or commit) did not answer within ``statement_timeout``: its
    outcome is unknown and asyncpg is cancelling it, so the connection is dropped
    (only this one: a slow statement is no proof the server is gone), and the error
    becomes an ``OperationalError`` of an invalidated connection, like a lost one.
    """

    def handle_error(context: ExceptionContext) -> Exception | None:
        original = context.original_exception
        if not isinstance(original, TimeoutError):
            return None
        context.is_disconnect = True
        context.invalidate_pool_on_disconnect = False
        dbapi = context.dialect.loaded_dbapi
        orig = dbapi.OperationalError(
            _no_answer(settings.statement_timeout, "DATABASE_STATEMENT_TIMEOUT")
        )
        orig.__cause__ = original
        return DBAPIError.instance(
            context.statement,
            context.parameters,
            orig,
            dbapi.Error,
            hide_parameters=settings.hide_parameters,
            connection_invalidated=True,
            dialect=context.dialect,
        )

    return handle_error


# Connection-record keys (``record.info``, cleared when a connection is replaced).
#: When the connection was opened or last returned to the pool (``time.monotonic()``).
_LAST_USED = "portside_last_used"
#: The connection has just been opened: the checkout needs no check.
_FRESH = "portside_fresh"
#: A statement ran that may have changed its session state: reset it at next checkout.
_DIRTY = "portside_session_state_changed"
#: Set (to the record itself) when a checkout sent nothing: the first statement may
#: be retried once on a new connection if this one turns out to be lost.
_UNVERIFIED = "portside_unverified"


class _Checkout:
    """What one engine does when its pool hands out a connection, and at its first statement.

    Listeners on the engine's pool (``connect``, ``checkout``, ``checkin``) and
    dialect (``do_execute*``, ``handle_error``). The checkout talks to the server
    only when it has to (see the module's docstring): a connection that may be
    dead, or whose session state may have changed.
    """

    def __init__(
        self,
        settings: DatabaseSettings,
        *,
        asyncpg: bool,
        reconnected: Callable[[Any], None] | None = None,
    ) -> None:
        self._asyncpg = asyncpg
        self._reconnected = reconnected
        self._limit = settings.connect_timeout
        self._pre_ping = settings.pool_pre_ping
        self._idle = settings.pool_pre_ping_idle
        self._reset = settings.reset_session_state
        #: When a connection of this pool was last lost (``time.monotonic()``).
        self._lost_at = -math.inf

    def install(self, engine: Engine) -> None:
        event.listen(engine, "connect", self._connected)
        event.listen(engine, "checkin", self._checked_in)
        event.listen(engine, "handle_error", self._error)
        if self._pre_ping or self._reset:
            event.listen(engine, "checkout", self._checkout)
            # The dialect's events, not the engine's before_cursor_execute: one
            # connection-level listener makes every new Connection resolve the
            # engine's events through a joined dispatcher (see failed_statements).
            dialect = engine.dialect
            for name in ("do_execute", "do_executemany", "do_execute_no_params"):
                listener = self._statement(getattr(dialect, name))
                event.listen(dialect, name, listener, retval=True)

    # -- the pool's events -------------------------------------------------------

    def _connected(self, _dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info[_LAST_USED] = time.monotonic()
        record.info[_FRESH] = True

    def _checked_in(self, dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        if dbapi_connection is not None:  # None: it was invalidated
            record.info[_LAST_USED] = time.monotonic()
            record.info.pop(_UNVERIFIED, None)

    def _error(self, context: ExceptionContext) -> None:
        # asyncpg's statement timeout is a bare TimeoutError (made a disconnect later).
        if context.is_disconnect or isinstance(context.original_exception, TimeoutError):
            self._lost_at = time.monotonic()

    def _checkout(self, dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: Any) -> None:
        info = record.info
        if info.pop(_FRESH, False):
            return
        if self._reset and info.get(_DIRTY):
            self._run(dbapi_connection, RESET_SESSION_STATE)
            del info[_DIRTY]
            return
        if not self._pre_ping:
            return
        last_used = info.get(_LAST_USED, -math.inf)
        if (
            time.monotonic() - last_used >= self._idle
            or last_used <= self._lost_at
            or not self._looks_alive(dbapi_connection)
        ):
            self._run(dbapi_connection, PING)
        else:
            info[_UNVERIFIED] = record

    def _looks_alive(self, dbapi_connection: Any) -> bool:
        """Whether the connection shows no sign of being closed, without a round trip.

        asyncpg reads the socket on the event loop: a connection the server closed
        is already marked closed. psycopg reads only when asked: a socket with
        something to read (an idle connection is told nothing but its end) gets
        the real ping.
        """
        if self._asyncpg:
            return not dbapi_connection.driver_connection.is_closed()
        if dbapi_connection.closed:
            return False
        try:
            readable, _, _ = select.select([dbapi_connection.pgconn.socket], [], [], 0)
        except Exception:  # no socket to look at: let the ping find out
            return False
        return not readable

    def _run(self, dbapi_connection: Any, statement: str) -> None:
        """Run ``statement`` on a checked-out connection; a failure replaces the connection.

        The driver's own execute with no arguments: the simple protocol, nothing
        prepared (safe behind PgBouncer), outside any transaction. It is a round trip,
        so it gets the time a new connection would (``connect_timeout``).
        """
        limit = self._limit
        try:
            if self._asyncpg:
                driver = dbapi_connection.driver_connection
                try:
                    await_(driver.execute(statement, timeout=limit))
                except TimeoutError:
                    driver.terminate()  # asyncpg would wait for its cancel request
                    raise
            else:
                dbapi_connection.autocommit = True
                try:
                    with bounded(dbapi_connection, limit, "DATABASE_CONNECT_TIMEOUT"):
                        dbapi_connection.execute(statement)
                finally:
                    if not dbapi_connection.closed:
                        dbapi_connection.autocommit = False
        except Exception as exc:
            self._lost_at = time.monotonic()  # the others idle meanwhile get pinged
            raise DisconnectionError(
                "the connection failed its checkout check; replacing it"
            ) from exc

    # -- statements ----------------------------------------------------------------

    def _statement(self, execute: Callable[..., None]) -> Callable[..., bool]:
        """A ``do_execute*`` listener: note a statement that may change session state,
        and run the first statement after an unchecked checkout.

        Any other statement is left to the dialect (``False``). The first one runs
        here; if it fails because its connection was lost, it runs once more on a
        new connection put in the lost one's place.
        """
        reset = self._reset

        def statement(cursor: DBAPICursor, *args: Any) -> bool:
            context: ExecutionContext | None = args[-1]
            if context is None:
                return False  # SQLAlchemy's own side statements (sequence defaults)
            try:
                info = context.root_connection.info
            except NotImplementedError:
                return False  # the dialect's first look at a new connection: no pool entry
            changes = reset and may_change_session_state(args[0])
            if changes:
                info[_DIRTY] = True
            record = info.pop(_UNVERIFIED, None)
            if record is None or context.execute_style is ExecuteStyle.INSERTMANYVALUES:
                return False  # insertmanyvalues batches keep their first cursor
            fairy = context.root_connection.connection
            if getattr(fairy.dbapi_connection, "autocommit", False):
                return False  # a statement may have committed before the loss
            try:
                execute(cursor, *args)
            except Exception as exc:
                if not self._lost(exc, fairy.dbapi_connection, cursor, context):
                    raise
                cursor = self._replace(record, fairy, exc, context)
                if changes:
                    info[_DIRTY] = True  # the new connection's info starts empty
                execute(cursor, *args)
            return True

        return statement

    def _lost(self, exc: Exception, dbapi_connection: Any, cursor: Any, context: Any) -> bool:
        """Whether ``exc`` says the connection was lost (not a timeout, nor a read-only error)."""
        if isinstance(exc, TimeoutError) or getattr(dbapi_connection, "timed_out", False):
            return False
        if not context.dialect.is_disconnect(exc, dbapi_connection, cursor):
            return False
        if self._asyncpg:
            return bool(dbapi_connection.driver_connection.is_closed())
        return bool(dbapi_connection.closed)

    def _replace(
        self, record: Any, fairy: Any, exc: Exception, context: ExecutionContext
    ) -> DBAPICursor:
        """Put a new connection in place of the lost one, under the same checkout."""
        self._lost_at = time.monotonic()
        record.invalidate(exc)
        fairy.dbapi_connection = dbapi_connection = record.get_connection()
        record.info.pop(_FRESH, None)
        connection = context.root_connection
        dialect: Any = context.dialect  # a DefaultDialect: connection_characteristics
        options = connection.get_execution_options()
        # What the checkout had set on the lost connection (an isolation level...).
        for name, characteristic in dialect.connection_characteristics.items():
            if name in options:
                characteristic.set_characteristic(dialect, dbapi_connection, options[name])
        if self._reconnected is not None:
            self._reconnected(dbapi_connection)
        context.cursor = cursor = context.create_cursor()
        return cursor


def _configure(
    engine: Engine,
    settings: DatabaseSettings,
    *,
    asyncpg: bool,
    reconnected: Callable[[Any], None] | None = None,
) -> None:
    event.listen(engine, "handle_error", _read_only_is_a_disconnect)
    event.listen(engine, "checkout", _discard_if_cancelled, insert=True)
    _Checkout(settings, asyncpg=asyncpg, reconnected=reconnected).install(engine)


def _discard_if_cancelled(_dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: Any) -> None:
    """Replace a connection a cancel request was sent on (see :mod:`portside.interrupts`).

    The request's signal may reach the server after the statement it was meant for
    ended, and would then cancel the next one: another request's. A checkout that
    raises ``DisconnectionError`` makes the pool discard the connection and connect
    afresh.
    """
    if record.info.pop(CANCEL_SENT, False):
        raise DisconnectionError("a cancel request was sent on this connection; replacing it")


@contextmanager
def bounded(connection: Any, seconds: float, setting: str) -> Iterator[None]:
    """Bound each wait of a psycopg ``connection`` by ``seconds`` (``setting``), for a while.

    Instead of the statement timeout; a wait that runs out sends no cancel request.
    """
    if not hasattr(connection, "override"):
        yield  # not one of portside's (nothing to change)
        return
    saved, connection.override = connection.override, (seconds, setting)
    try:
        yield
    finally:
        connection.override = saved


@functools.cache
def bounded_psycopg_connection() -> type[psycopg.Connection[Any]]:
    """psycopg's ``Connection``, with every wait for the server bounded.

    psycopg waits for the server in Python, in :meth:`psycopg.Connection.wait`, which
    takes a timeout: each wait gets ``statement_limit`` seconds, a rollback's
    ``cleanup_limit``, a wait under :func:`bounded` what it says. A wait that runs
    out closes the connection (the protocol is mid-message, the statement's outcome
    unknown) and raises ``OperationalError``, which SQLAlchemy takes for a lost
    connection. Before that, a statement that ran out is cancelled on the server,
    if the cancel request gets through within ``cleanup_limit`` (libpq 17's
    non-blocking cancel; older libpq blocks, so it is not tried). Waiting for
    ``LISTEN`` notifications is no statement and keeps its own timeout.
    """
    # Imported here: the sync driver may not be installed (engines="auto").
    import psycopg  # noqa: PLC0415
    from psycopg.connection import _WAIT_INTERVAL  # noqa: PLC0415
    from psycopg.errors import _WaitTimeout  # noqa: PLC0415

    class BoundedConnection(psycopg.Connection[Any]):
        statement_limit: float | None = None
        cleanup_limit: float | None = None
        timed_out = False
        override: tuple[float, str] | None = None

        def wait(
            self, gen: PQGen[_T], interval: float = _WAIT_INTERVAL, timeout: float | None = None
        ) -> _T:
            if self.override is not None:
                limit, setting = self.override
            elif self.statement_limit is not None:
                limit, setting = self.statement_limit, "DATABASE_STATEMENT_TIMEOUT"
            else:
                return super().wait(gen, interval, timeout)
            if timeout is not None or _is_notifies(gen):
                return super().wait(gen, interval, timeout)
            try:
                return super().wait(gen, interval, limit)
            except _WaitTimeout:
                self.timed_out = True  # a lost connection, but not one to retry on
                if self.override is None:
                    self._cancel_within(self.cleanup_limit)
                self.pgconn.finish()
                raise psycopg.OperationalError(_no_answer(limit, setting)) from None

        def _cancel_within(self, seconds: float | None) -> None:
            if seconds is None or not psycopg.capabilities.has_cancel_safe():
                return
            with contextlib.suppress(psycopg.Error):
                self.cancel_safe(timeout=seconds)

        def rollback(self) -> None:
            if self.cleanup_limit is None or self.override is not None:
                super().rollback()
                return
            with bounded(self, self.cleanup_limit, "DATABASE_CLEANUP_TIMEOUT"):
                super().rollback()

    return BoundedConnection


def _is_notifies(gen: object) -> bool:
    return getattr(gen, "__name__", None) == "notifies"


def _connect_bounded_psycopg(settings: DatabaseSettings) -> Any:
    """A ``do_connect`` listener opening :func:`bounded_psycopg_connection` connections."""

    def connect(_dialect: Dialect, _record: Any, cargs: Any, cparams: Any) -> Any:
        connection = bounded_psycopg_connection().connect(*cargs, **cparams)
        connection.statement_limit = settings.statement_timeout  # type: ignore[attr-defined]
        connection.cleanup_limit = settings.cleanup_timeout  # type: ignore[attr-defined]
        return connection

    return connect


async def _close_quietly(connection: Any) -> None:
    """Close an asyncpg connection within its bound; one that fails is aborted by asyncpg."""
    with contextlib.suppress(Exception):
        await connection.close()


@functools.cache
def _asyncpg_connection_class() -> type[Any]:
    """asyncpg's ``Connection``, whose close waits at most ``close_limit`` seconds.

    ``in_use``: checked out of its pool now (an attribute, not a set of the
    checked-out ones: set at every checkout and checkin, it costs no allocation).
    ``after_begin``: statements the next ``BEGIN`` carries in its own round trip (a
    deadline's ``SET LOCAL``s, see :mod:`portside.deadlines`); asyncpg sends
    ``BEGIN`` as a simple query, which may hold several statements.
    """
    import asyncpg  # type: ignore[import-untyped]  # noqa: PLC0415 - may not be installed

    class BoundedConnection(asyncpg.Connection):  # type: ignore[misc]
        close_limit: float | None = None
        in_use: bool = False
        after_begin: str | None = None

        async def execute(self, query: str, *args: Any, timeout: float | None = None) -> str:  # noqa: ASYNC109
            # Only BEGIN and COMMIT come here (statements are prepared): one check.
            if self.after_begin is not None and not args and query.startswith("BEGIN"):
                query = f"{query} {self.after_begin}"
                self.after_begin = None
            result: str = await super().execute(query, *args, timeout=timeout)
            return result

        async def close(self, *, timeout: float | None = None) -> None:  # noqa: ASYNC109
            # asyncpg's close waits for the server's goodbye with no timeout (or
            # command_timeout); SQLAlchemy asks for 2 seconds when it invalidates.
            limit = self.close_limit
            if limit is not None:
                timeout = limit if timeout is None else min(timeout, limit)
            await super().close(timeout=timeout)

    return BoundedConnection


class PostgreSQLAdapter(SyncAdapter):
    """Synchronous PostgreSQL through psycopg 3."""

    def engine_options(self) -> dict[str, Any]:
        """Pool knobs from the settings plus psycopg's connect timeout (whole seconds)."""
        options = super().engine_options() | self.pooling_options()
        options["pool_pre_ping"] = False  # done by the checkout statement
        options["connect_args"] = {
            "connect_timeout": max(1, math.ceil(self.settings.connect_timeout))
        }
        if self.settings.pgbouncer:
            options["connect_args"]["prepare_threshold"] = None
        return options

    @property
    def pings_on_checkout(self) -> bool:
        """Whether a checked-out connection is checked (for free, or pinged when it may be dead)."""
        return self.settings.pool_pre_ping

    def configure(self, engine: Engine) -> None:
        """Treat read-only errors as disconnects; ping and reset on checkout; bound every wait."""
        _configure(engine, self.settings, asyncpg=False)
        event.listen(engine, "do_connect", _connect_bounded_psycopg(self.settings))


class AsyncPostgreSQLAdapter(AsyncAdapter):
    """Asynchronous PostgreSQL through asyncpg.

    asyncpg rejects libpq's ``application_name`` and ``sslmode`` URL parameters; they
    are moved into asyncpg's ``server_settings`` and ``ssl`` so one URL serves both
    engines.
    """

    def __init__(self, settings: DatabaseSettings, url: URL) -> None:
        self._server_settings = {
            key: str(url.query[key]) for key in _LIBPQ_SERVER_SETTINGS if key in url.query
        }
        self._ssl = url.query.get(_LIBPQ_SSLMODE)
        moved = (*_LIBPQ_SERVER_SETTINGS, _LIBPQ_SSLMODE)
        # The asyncpg connections this engine opened (each knows if it is checked out).
        self._connections: weakref.WeakSet[Any] = weakref.WeakSet()
        super().__init__(settings, url.difference_update_query(moved))

    def engine_options(self) -> dict[str, Any]:
        """Pool knobs from the settings plus asyncpg's connect and statement timeouts."""
        options = super().engine_options() | self.pooling_options()
        options["pool_pre_ping"] = False  # done by the checkout statement
        options["connect_args"] = {
            "timeout": self.settings.connect_timeout,
            "command_timeout": self.settings.statement_timeout,
            "connection_class": _asyncpg_connection_class(),
        }
        if self._server_settings:
            options["connect_args"]["server_settings"] = self._server_settings
        if self._ssl is not None:
            options["connect_args"]["ssl"] = str(self._ssl)
        if self.settings.pgbouncer:
            options["connect_args"] |= {
                "statement_cache_size": 0,
                "prepared_statement_cache_size": 0,
                "prepared_statement_name_func": _unique_statement_name,
            }
        return options

    @property
    def pings_on_checkout(self) -> bool:
        """Whether a checked-out connection is checked (for free, or pinged when it may be dead)."""
        return self.settings.pool_pre_ping

    def configure(self, engine: Engine) -> None:
        """Treat read-only errors as disconnects; ping and reset on checkout; bound every wait."""
        _configure(engine, self.settings, asyncpg=True, reconnected=self._checked_out)
        event.listen(engine, "do_connect", _connect_within_timeout(self.settings))
        event.listen(engine, "handle_error", _statement_timeout_is_a_disconnect(self.settings))
        event.listen(engine, "connect", self._opened)
        event.listen(engine, "checkout", self._checked_out)
        event.listen(engine, "checkin", self._checked_in)

    def _opened(self, dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        driver = dbapi_connection.driver_connection
        driver.close_limit = self.settings.cleanup_timeout
        self._connections.add(driver)

    def _checked_out(self, dbapi_connection: Any, _record: Any = None, _proxy: Any = None) -> None:
        dbapi_connection.driver_connection.in_use = True

    def _checked_in(self, dbapi_connection: Any, _record: Any) -> None:
        if dbapi_connection is not None:  # None: it was invalidated, and is closed
            driver = dbapi_connection.driver_connection
            driver.in_use = False
            driver.after_begin = None  # a unit that never began (AUTOCOMMIT) left it

    async def dispose(self) -> None:
        """Close the pooled connections, side by side, each within the cleanup timeout.

        A connection whose server does not answer is dropped when its close times
        out. If the disposal is cut short (cancelled, as :meth:`Database.dispose
        <portside.Database.dispose>` does when its bound runs out), the pooled
        connections still open are terminated. Connections checked out by units
        still running are left to them, as SQLAlchemy's ``dispose()`` does: their
        own waits are bounded.
        """
        try:
            async with anyio.create_task_group() as group:
                for connection in self._idle():
                    group.start_soon(_close_quietly, connection)
            await self.engine.dispose()  # the pool's connections are closed by now
        except BaseException:
            self.terminate()
            raise

    def terminate(self) -> int:
        """Drop the pooled connections that are still open, waiting for nothing; how many.

        asyncpg's ``terminate()`` closes the socket without a word to the server: for
        a server that no longer answers.
        """
        idle = self._idle()
        for connection in idle:
            connection.terminate()
        return len(idle)

    def _idle(self) -> list[Any]:
        return [
            connection
            for connection in self._connections
            if not connection.in_use and not connection.is_closed()
        ]


def build_postgresql(
    settings: DatabaseSettings, sync_url: URL | None, async_url: URL | None
) -> tuple[PostgreSQLAdapter | None, AsyncPostgreSQLAdapter | None]:
    """Build the requested PostgreSQL adapters."""
    sync_adapter = PostgreSQLAdapter(settings, sync_url) if sync_url is not None else None
    try:
        async_adapter = (
            AsyncPostgreSQLAdapter(settings, async_url) if async_url is not None else None
        )
    except BaseException:
        if sync_adapter is not None:
            sync_adapter.dispose()
        raise
    return sync_adapter, async_adapter
