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
  never collide. The checkout statement below is unprepared either way.
- ``reset_session_state``: a connection's session state is reset
  (:data:`RESET_SESSION_STATE`) before the pool hands it to the next unit of work, so
  a request's ``SET``/``SET ROLE`` never reaches the next request that borrows the
  same connection.

Both happen in one round trip when a connection is checked out: the reset is the
ping (a dead connection fails it and is replaced). Resetting on the way back to the
pool instead would cost a second round trip, inside the time a request holds its
connection, on every request.

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

from portside.adapters.base import AsyncAdapter, SyncAdapter
from portside.internals import await_

if TYPE_CHECKING:
    from sqlalchemy import Engine
    from sqlalchemy.engine import URL, ExceptionContext

    from portside.settings import DatabaseSettings


# libpq URL parameters asyncpg rejects, and where asyncpg takes them instead.
_LIBPQ_SERVER_SETTINGS = ("application_name",)
_LIBPQ_SSLMODE = "sslmode"

#: SQLSTATE of "cannot execute ... in a read-only transaction".
READ_ONLY_SQLSTATE = "25006"

#: What ``reset_session_state`` runs when a connection is checked out, in one round
#: trip outside any transaction: ``DISCARD ALL`` minus ``DEALLOCATE ALL``,
#: ``DISCARD PLANS`` and ``DISCARD SEQUENCES``, which would pull prepared statements
#: from under asyncpg's and psycopg's statement caches.
RESET_SESSION_STATE = (
    "CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; UNLISTEN *; "
    "SELECT pg_advisory_unlock_all(); DISCARD TEMP"
)
#: The checkout statement when only the pre-ping is wanted.
PING = "SELECT 1"


def _read_only_is_a_disconnect(context: ExceptionContext) -> None:
    """Invalidate the pool on a read-only error: the server was probably demoted."""
    if getattr(context.original_exception, "sqlstate", None) == READ_ONLY_SQLSTATE:
        context.is_disconnect = True


def _unique_statement_name() -> str:
    return f"__asyncpg_{uuid.uuid4().hex}__"


def checkout_statement(settings: DatabaseSettings) -> str | None:
    """What runs when a connection is checked out: the reset, the ping, or nothing."""
    if settings.reset_session_state:
        return RESET_SESSION_STATE
    return PING if settings.pool_pre_ping else None


def _configure(engine: Engine, settings: DatabaseSettings, *, asyncpg: bool) -> None:
    event.listen(engine, "handle_error", _read_only_is_a_disconnect)
    statement = checkout_statement(settings)
    if statement is None:
        return

    def on_checkout(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        # The driver's own execute with no arguments: the simple protocol, nothing
        # prepared (safe behind PgBouncer), outside any transaction. A failure makes
        # the pool replace the connection, as pre-ping does.
        try:
            if asyncpg:
                await_(dbapi_connection.driver_connection.execute(statement))
            else:
                dbapi_connection.autocommit = True
                try:
                    dbapi_connection.execute(statement)
                finally:
                    dbapi_connection.autocommit = False
        except Exception as exc:
            raise DisconnectionError(
                "the connection failed its checkout check; replacing it"
            ) from exc

    event.listen(engine, "checkout", on_checkout)


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
        """Whether the checkout statement (ping or reset) runs."""
        return checkout_statement(self.settings) is not None

    def configure(self, engine: Engine) -> None:
        """Treat read-only errors as disconnects; ping and reset on checkout."""
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
        options["pool_pre_ping"] = False  # done by the checkout statement
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
        """Whether the checkout statement (ping or reset) runs."""
        return checkout_statement(self.settings) is not None

    def configure(self, engine: Engine) -> None:
        """Treat read-only errors as disconnects; ping and reset on checkout."""
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
