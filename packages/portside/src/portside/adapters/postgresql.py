"""PostgreSQL adapters: psycopg 3 (sync) and asyncpg (async).

Defaults: a queue pool sized from the settings, pre-ping on checkout (a connection
the server or a proxy dropped is replaced instead of failing the request) and
recycling, and a bounded connect timeout so startup and pool refills cannot hang.

Also, from the settings:

- ``pgbouncer``: no named prepared statement outlives its transaction, so PgBouncer
  in transaction pooling can hand each transaction a different server connection.
  psycopg never prepares (``prepare_threshold=None``); asyncpg keeps no statement
  cache (``statement_cache_size=0``, SQLAlchemy's ``prepared_statement_cache_size=0``)
  and names each statement uniquely, so two clients sharing a server connection
  never collide. Pre-ping runs an unprepared ``SELECT``/``;`` either way.
- ``reset_on_return``: a connection returning to the pool gets its session state
  reset (:data:`RESET_SESSION_STATE`), so a request's ``SET``/``SET ROLE`` never
  reaches the next request that borrows the same connection.

A read-only transaction error (SQLSTATE 25006: a primary demoted to a standby, a
database switched to read-only) is treated like a lost connection: the pool is
invalidated and the next checkout connects afresh, to the new primary.
"""

from __future__ import annotations

import math
import uuid
from typing import TYPE_CHECKING, Any

from sqlalchemy import event
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.util import await_

from portside.adapters.base import AsyncAdapter, SyncAdapter

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.engine import URL, ExceptionContext
    from sqlalchemy.pool import ConnectionPoolEntry, PoolResetState

    from portside.settings import DatabaseSettings


# libpq URL parameters asyncpg rejects, and where asyncpg takes them instead.
_LIBPQ_SERVER_SETTINGS = ("application_name",)
_LIBPQ_SSLMODE = "sslmode"

#: SQLSTATE of "cannot execute ... in a read-only transaction".
READ_ONLY_SQLSTATE = "25006"

#: What ``reset_on_return`` runs when a connection returns to the pool, in one round
#: trip outside any transaction: ``DISCARD ALL`` minus ``DEALLOCATE ALL``,
#: ``DISCARD PLANS`` and ``DISCARD SEQUENCES``, which would pull prepared statements
#: from under asyncpg's and psycopg's statement caches.
RESET_SESSION_STATE = (
    "CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; UNLISTEN *; "
    "SELECT pg_advisory_unlock_all(); DISCARD TEMP"
)


def _read_only_is_a_disconnect(context: ExceptionContext) -> None:
    """Invalidate the pool on a read-only error: the server was probably demoted."""
    if getattr(context.original_exception, "sqlstate", None) == READ_ONLY_SQLSTATE:
        context.is_disconnect = True


def _unique_statement_name() -> str:
    return f"__asyncpg_{uuid.uuid4().hex}__"


def _ping_on_checkout(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """asyncpg's pre-ping in one round trip (SQLAlchemy's own takes three).

    The driver's execute with no arguments uses the simple protocol: nothing is
    prepared, so it is safe behind PgBouncer too. A failure makes the pool replace
    the connection, as pre-ping does.
    """
    try:
        await_(dbapi_connection.driver_connection.execute("SELECT 1"))
    except Exception as exc:
        raise DisconnectionError("pre-ping failed; replacing the connection") from exc


def _configure(engine: Engine, settings: DatabaseSettings, *, asyncpg: bool) -> None:
    event.listen(engine, "handle_error", _read_only_is_a_disconnect)
    if asyncpg and settings.pool_pre_ping:
        event.listen(engine, "checkout", _ping_on_checkout)
    if not settings.reset_on_return:
        return

    def reset(dbapi_connection: Any, record: ConnectionPoolEntry, state: PoolResetState) -> None:
        # Runs before the pool's own rollback; a failure here invalidates the connection.
        if state.terminate_only or not state.asyncio_safe:
            return
        if not state.transaction_was_reset:
            dbapi_connection.rollback()  # RESET inside a transaction would roll back too
        if asyncpg:
            # The driver's own execute with no arguments: simple protocol, no prepare,
            # and outside a transaction now that the adapter has rolled back.
            await_(dbapi_connection.driver_connection.execute(RESET_SESSION_STATE))
        else:
            dbapi_connection.autocommit = True
            try:
                dbapi_connection.execute(RESET_SESSION_STATE)
            finally:
                dbapi_connection.autocommit = False

    event.listen(engine, "reset", reset)


class PostgreSQLAdapter(SyncAdapter):
    """Synchronous PostgreSQL through psycopg 3."""

    def engine_options(self) -> dict[str, Any]:
        """Pool knobs from the settings plus psycopg's connect timeout (whole seconds)."""
        options = super().engine_options() | self.pooling_options()
        options["connect_args"] = {
            "connect_timeout": max(1, math.ceil(self.settings.connect_timeout))
        }
        if self.settings.pgbouncer:
            options["connect_args"]["prepare_threshold"] = None
        return options

    def configure(self, engine: Engine) -> None:
        """Treat read-only errors as disconnects; reset session state on return."""
        _configure(engine, self.settings, asyncpg=False)


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
        super().__init__(settings, url.difference_update_query(moved))

    def engine_options(self) -> dict[str, Any]:
        """Pool knobs from the settings plus asyncpg's connect timeout."""
        options = super().engine_options() | self.pooling_options()
        options["pool_pre_ping"] = False  # replaced by _ping_on_checkout
        options["connect_args"] = {"timeout": self.settings.connect_timeout}
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
        """Pre-ping runs as portside's one-round-trip checkout listener."""
        return self.settings.pool_pre_ping

    def configure(self, engine: Engine) -> None:
        """Treat read-only errors as disconnects; reset session state on return."""
        _configure(engine, self.settings, asyncpg=True)


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
