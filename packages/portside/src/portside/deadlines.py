"""Deadlines the database enforces: a runaway query is stopped, not only abandoned.

A unit of work with a deadline (``deadline=`` seconds, default the database's
``DATABASE_DEADLINE``) tells the database, when each of its transactions begins,
how much time is left:

* PostgreSQL: ``statement_timeout`` and ``lock_timeout`` set to what is left of the
  deadline. Each statement, and each wait for a lock, may take at most what was
  left when the transaction began. A statement stopped this way fails with SQLSTATE
  57014 (answered 504), a lock wait with 55P03 (answered 409, retry may succeed).
  They are set with ``set_config(..., true)`` (``SET LOCAL``, ending with the
  transaction, so the connection needs no reset afterwards) at the start of each
  of the unit's transactions: on asyncpg in the ``BEGIN``'s own round trip, on
  psycopg (which sends ``BEGIN`` with the first statement) in one of their own;
* SQLite: a progress handler interrupts any statement once the deadline has passed
  (``SQLITE_INTERRUPT``, answered 504). It is removed when the connection goes back
  to the pool.

Without a deadline it costs nothing.
"""

from __future__ import annotations

import sqlite3
import time
from typing import Any

from sqlalchemy import Connection, event
from sqlalchemy.orm import SessionTransaction

from portside.sessions import _EndableSession

__all__: list[str] = []

# How many SQLite virtual machine instructions between two looks at the clock.
_SQLITE_CHECK_EVERY = 1000
# A statement gets at least this long: 0 would mean "no timeout" on PostgreSQL.
_MIN_MS = 1


#: Connection-record flag: a SQLite progress handler is set and must be removed.
PROGRESS_HANDLER_SET = "portside_progress_handler_set"


def _remaining_ms(deadline: float) -> int:
    return max(_MIN_MS, int((deadline - time.monotonic()) * 1000))


def sqlite_connection(driver_connection: Any) -> sqlite3.Connection | None:
    """The ``sqlite3`` connection under a pysqlite or portside aiosqlite connection."""
    if isinstance(driver_connection, sqlite3.Connection):
        return driver_connection
    raw = getattr(driver_connection, "_connection", None)  # portside's aiosqlite wrapper
    return raw if isinstance(raw, sqlite3.Connection) else None


def _apply(connection: Connection, deadline: float) -> None:
    dialect = connection.dialect.name
    if dialect == "postgresql":
        ms = _remaining_ms(deadline)
        # A literal integer: no parameters, so the same text for every driver.
        statement = (
            f"SELECT set_config('statement_timeout', '{ms}', true), "
            f"set_config('lock_timeout', '{ms}', true)"
        )
        driver: Any = connection.connection.driver_connection
        if hasattr(driver, "after_begin") and not driver.is_in_transaction():
            # portside's asyncpg connection, whose BEGIN is not sent yet (SQLAlchemy
            # sends it with the first statement): the BEGIN carries these too.
            driver.after_begin = statement + ";"
        else:
            # psycopg, or a transaction already open (a test's outer one).
            connection.exec_driver_sql(statement)
    elif dialect == "sqlite":
        raw = sqlite_connection(connection.connection.driver_connection)
        if raw is not None:
            raw.set_progress_handler(lambda: time.monotonic() > deadline, _SQLITE_CHECK_EVERY)
            connection.connection.info[PROGRESS_HANDLER_SET] = True


def _after_begin(
    session: _EndableSession, transaction: SessionTransaction, connection: Connection
) -> None:
    deadline = session._portside_deadline
    if deadline is not None and not transaction.nested:
        _apply(connection, deadline)


def clear_sqlite(driver_connection: Any, record_info: dict[str, Any]) -> None:
    """Remove a deadline's progress handler, if any (the connection goes back to the pool)."""
    if record_info.pop(PROGRESS_HANDLER_SET, False):
        raw = sqlite_connection(driver_connection)
        if raw is not None:
            raw.set_progress_handler(None, 0)


# Once, on the class: a session without a deadline costs one attribute check.
event.listen(_EndableSession, "after_begin", _after_begin)
