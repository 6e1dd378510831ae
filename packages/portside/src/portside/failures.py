"""What a database failure means, whichever driver reported it: one table.

Drivers report the same event differently. A deadlock is psycopg's
``OperationalError`` but asyncpg's plain ``Error``; a server that went away is
psycopg's ``OperationalError`` but a bare ``ConnectionRefusedError`` from asyncpg;
and SQLite reports "no such table" and "disk I/O error" alike as
``OperationalError``. So portside classifies by what happened: the PostgreSQL
SQLSTATE (exact code, then class), the SQLite result code, then the exception
type, in that order. :func:`classify` answers with a :class:`Failure`:

=========== ====== =========== =========================================================
kind        status Retry-After what happened
=========== ====== =========== =========================================================
UNAVAILABLE 503    1           the database cannot serve now: unreachable, connection
                               lost, pool exhausted, too many connections, shutting
                               down or starting up, read-only server (25006), login
                               refused or database gone at runtime, SQLite locked past
                               its busy timeout, cannot open, I/O error, disk full
CONFLICT    409    1           a concurrent transaction won: serialization failure
                               (40001), deadlock (40P01), lock not available (55P03,
                               ``NOWAIT`` or ``lock_timeout``), two units waiting for
                               each other's SQLite writer turn; the same request,
                               retried, may succeed
TIMEOUT     504    -           the statement was canceled: ``statement_timeout`` or a
                               cancel request (57014), idle-in-transaction timeout
                               (25P03), SQLite interrupt
BUG         500    -           everything else: SQL errors ("no such table", syntax),
                               constraint violations, misuse, any non-database error
=========== ====== =========== =========================================================

:attr:`Failure.heals` says whether the same attempt may succeed later unchanged;
startup retries only those (:func:`is_transient_at_startup`): a refused login, a
missing database or a bad SSL setting fail at once.
"""

from __future__ import annotations

import enum
import sqlite3
import ssl
from collections.abc import Iterator
from dataclasses import dataclass

from sqlalchemy.exc import DBAPIError, DisconnectionError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from portside.errors import (
    GateDeadlockError,
    PartialCommitError,
    PortsideError,
    ShuttingDownError,
)

__all__ = ["Failure", "Kind", "classify", "is_retryable_conflict", "is_transient_at_startup"]


class Kind(enum.Enum):
    """What a failure means for the client; the value is the HTTP status answering it."""

    UNAVAILABLE = 503
    CONFLICT = 409
    TIMEOUT = 504
    BUG = 500


_DETAILS = {
    Kind.UNAVAILABLE: "The database is unavailable; try again shortly.",
    Kind.CONFLICT: (
        "The change conflicted with a concurrent one and was not saved; retry the request."
    ),
    Kind.TIMEOUT: "The database did not answer in time; the request was not completed.",
    Kind.BUG: "The change could not be saved; nothing was committed.",
}
#: Seconds a client should wait before retrying, for the kinds where retrying helps.
RETRY_AFTER = 1


@dataclass(frozen=True, slots=True)
class Failure:
    """One row of the table: what happened, and what the client and startup should do."""

    kind: Kind
    #: What happened, in a few words, for logs (never contains a password).
    cause: str
    #: Whether the same attempt may succeed later, unchanged (startup retries only these).
    heals: bool

    @property
    def status(self) -> int:
        """The HTTP status answering a request that failed this way."""
        return self.kind.value

    @property
    def detail(self) -> str:
        """The JSON ``detail`` of that response: what happened and what to do."""
        return _DETAILS[self.kind]

    @property
    def headers(self) -> dict[str, str]:
        """Extra response headers: ``Retry-After`` where retrying helps."""
        if self.kind in (Kind.UNAVAILABLE, Kind.CONFLICT):
            return {"Retry-After": str(RETRY_AFTER)}
        return {}


_U, _C, _T = Kind.UNAVAILABLE, Kind.CONFLICT, Kind.TIMEOUT

# PostgreSQL SQLSTATEs: exact codes are looked up first, then the two-character class.
_BY_SQLSTATE = {
    "40001": Failure(_C, "serialization failure", heals=True),
    "40P01": Failure(_C, "deadlock", heals=True),
    "55P03": Failure(_C, "lock not available", heals=True),
    "57014": Failure(_T, "statement canceled or timed out", heals=True),
    "25P03": Failure(_T, "idle-in-transaction timeout", heals=True),
    "25006": Failure(_U, "read-only server (a standby, or a demoted primary)", heals=True),
    "3D000": Failure(_U, "the database does not exist", heals=False),
    "57P04": Failure(_U, "the database was dropped", heals=False),
    "08": Failure(_U, "connection failure", heals=True),
    "28": Failure(_U, "login refused", heals=False),
    "53": Failure(_U, "server out of resources (e.g. too many connections)", heals=True),
    "57": Failure(_U, "server shutting down, restarting or starting up", heals=True),
    "58": Failure(_U, "server system error", heals=True),
}

# SQLite primary result codes (extended codes are reduced to these).
_BY_SQLITE_CODE = {
    sqlite3.SQLITE_BUSY: Failure(_U, "SQLite database locked past the busy timeout", heals=True),
    sqlite3.SQLITE_LOCKED: Failure(_U, "SQLite table locked", heals=True),
    sqlite3.SQLITE_CANTOPEN: Failure(_U, "cannot open the SQLite database file", heals=False),
    sqlite3.SQLITE_IOERR: Failure(_U, "SQLite disk I/O error", heals=True),
    sqlite3.SQLITE_FULL: Failure(_U, "SQLite disk full", heals=True),
    sqlite3.SQLITE_NOMEM: Failure(_U, "SQLite out of memory", heals=True),
    sqlite3.SQLITE_READONLY: Failure(_U, "SQLite database file is read-only", heals=False),
    sqlite3.SQLITE_INTERRUPT: Failure(_T, "SQLite statement interrupted", heals=True),
}

_SHUTTING_DOWN = Failure(_U, "the lifecycle is shutting down", heals=False)
_POOL_EXHAUSTED = Failure(_U, "no pooled connection free within the pool timeout", heals=True)
_CONNECTION_LOST = Failure(_U, "connection lost", heals=True)
_UNREACHABLE = Failure(_U, "server unreachable", heals=True)
_SSL_REFUSED = Failure(_U, "SSL/TLS setting refused", heals=False)
_SETTINGS_REFUSED = Failure(
    _U, "the server refused the connection's database, role, password or SSL mode", heals=False
)
_GATE_DEADLOCK = Failure(_C, "two units waited for each other's SQLite writer turn", heals=True)
_BUG = Failure(Kind.BUG, "an error in the request or the application", heals=False)

# asyncpg raises some connection failures untranslated (OSError, or this by name).
_ASYNCPG_CONNECTION_LOST = "ConnectionDoesNotExistError"
# Connection failures that a retry cannot fix although they come as OSError.
_SSL_MESSAGES = ("rejected SSL upgrade", "does not support SSL", "SSL was required")
# psycopg (libpq) reports connection failures with no SQLSTATE; these messages mean
# the server is not there *yet* (or is busy). Any other such failure (a missing
# database or role, a refused password, a bad SSL mode) fails startup at once.
_HEALING_MESSAGES = (
    "connection refused",
    "timeout",
    "timed out",
    "server closed the connection",
    "connection reset",
    "could not receive data",
    "could not send data",
    "no route to host",
    "network is unreachable",
    "resolve host",  # psycopg's own resolver: the host's name may appear once it starts
    "translate host name",
    "name or service not known",
    "temporary failure in name resolution",
    "the database system is",  # starting up, shutting down, in recovery mode, ...
    "too many clients",
    "too many connections",
    "remaining connection slots",
    "terminating connection",
    "no more connections allowed",  # PgBouncer
    "cannot connect to server",  # PgBouncer
    "ssl syscall error",  # the network dropped under TLS
)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc``, the driver's exception it wraps, and their causes, outermost first."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        orig = current.orig if isinstance(current, DBAPIError) else None
        current = orig if isinstance(orig, BaseException) else current.__cause__


def _sqlstate(links: list[BaseException]) -> str | None:
    for link in links:
        sqlstate = getattr(link, "sqlstate", None)
        if isinstance(sqlstate, str) and sqlstate:
            return sqlstate
    return None


def classify(exc: BaseException) -> Failure:
    """Which row of the table ``exc`` falls in (see the module's docstring).

    Looks through SQLAlchemy's wrapper to the driver's exception and its causes,
    so the answer is the same for psycopg and asyncpg, pysqlite and aiosqlite.
    """
    if isinstance(exc, ShuttingDownError):
        return _SHUTTING_DOWN
    if isinstance(exc, PoolTimeoutError):
        return _POOL_EXHAUSTED
    if isinstance(exc, GateDeadlockError):
        return _GATE_DEADLOCK
    if isinstance(exc, PortsideError):
        return _BUG
    links = list(_chain(exc))
    sqlstate = _sqlstate(links)
    if sqlstate is not None:
        known = _BY_SQLSTATE.get(sqlstate) or _BY_SQLSTATE.get(sqlstate[:2])
        if known is not None:
            return known
    if any(isinstance(link, DisconnectionError) for link in links) or (
        isinstance(exc, DBAPIError) and exc.connection_invalidated
    ):
        return _CONNECTION_LOST
    for link in links:
        if isinstance(link, sqlite3.Error):
            return _BY_SQLITE_CODE.get(link.sqlite_errorcode & 0xFF, _BUG)
    if sqlstate is not None:
        return _BUG
    for link in links:
        if isinstance(link, ssl.SSLCertVerificationError):
            return _SSL_REFUSED
        if isinstance(link, OSError):  # refused, reset, timed out, DNS: asyncpg's raw errors
            return _SSL_REFUSED if _mentions(link, _SSL_MESSAGES) else _UNREACHABLE
        if type(link).__name__ == _ASYNCPG_CONNECTION_LOST:
            return _CONNECTION_LOST
    if isinstance(exc, OperationalError):
        # No SQLSTATE and not SQLite: libpq failed to connect or lost the connection.
        driver_error = exc.orig if isinstance(exc.orig, BaseException) else exc
        return _UNREACHABLE if _mentions(driver_error, _HEALING_MESSAGES) else _SETTINGS_REFUSED
    return _BUG


def is_transient_at_startup(exc: BaseException) -> bool:
    """Whether a failed startup check may pass if retried: the server may be coming up.

    True for a refused or timed-out connection, a server starting up (57P03) or out
    of connection slots (53300), a lost connection; false for what never heals by
    waiting: a missing database (3D000), a refused login (28xxx), an SSL mode the
    server does not support, bad connection parameters, a bug.
    """
    return classify(exc).heals


def _mentions(exc: BaseException, fragments: tuple[str, ...]) -> bool:
    text = str(exc).lower()
    return any(fragment.lower() in text for fragment in fragments)


#: SQLSTATEs after which the whole transaction, run again, may succeed.
_RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})


def is_retryable_conflict(exc: BaseException) -> bool:
    """Whether running the whole unit of work again may succeed: a lost race.

    True for a serialization failure (40001), a deadlock (40P01) and two units
    waiting for each other's SQLite writer turn; what opt-in retries retry.
    """
    if isinstance(exc, PartialCommitError):
        return False  # running it again would repeat what did commit
    if isinstance(exc, GateDeadlockError):
        return True
    return _sqlstate(list(_chain(exc))) in _RETRYABLE_SQLSTATES
