"""Every exception portside raises on purpose.

Messages say what happened and what to do next, and never contain a password:
URLs in them are always masked first.
"""

from __future__ import annotations

from sqlalchemy.exc import DBAPIError, InvalidRequestError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

# SQLSTATE "read_only_sql_transaction".
_READ_ONLY = "25006"


class PortsideError(Exception):
    """Base class of the errors portside raises on purpose."""


class ConfigurationError(PortsideError, ValueError):
    """The settings or a database URL cannot work as given."""


class DriverMissingError(ConfigurationError):
    """The database driver a URL asks for is not installed."""


class StartupError(PortsideError):
    """A database could not be made ready at startup.

    Raised by :class:`portside.Lifecycle` after it has disposed everything it built.
    """


class ShutdownError(PortsideError):
    """Disposing one or more databases failed at shutdown (every failure is listed)."""


class LifecycleStateError(PortsideError, RuntimeError):
    """The lifecycle was used before startup, after shutdown, or entered twice."""


class ShuttingDownError(LifecycleStateError):
    """A unit of work asked for a session while the lifecycle shuts down."""


class UnitOfWorkEndedError(PortsideError, InvalidRequestError):
    """A session was used after its unit of work (usually: its request) had ended.

    Subclasses SQLAlchemy's ``InvalidRequestError``, which is what a permanently
    closed session raises without portside.
    """


class TransactionAbortedError(PortsideError, InvalidRequestError):
    """A transaction (or SAVEPOINT) in which a statement failed was asked to commit.

    PostgreSQL has aborted such a transaction and would silently turn its COMMIT
    into a ROLLBACK; SQLite would commit the statements before the failure. portside
    rolls it back (a SAVEPOINT: back to its start) and raises this instead, so a
    unit of work never reports a commit that did not happen. Subclasses
    SQLAlchemy's ``InvalidRequestError``, like the errors of a session that must be
    rolled back.
    """

    @classmethod
    def after(cls, failure: str) -> TransactionAbortedError:
        """The error for a transaction in which ``failure`` (one line) happened."""
        what = f" ({failure})" if failure else ""
        return cls(
            f"A statement failed in this transaction{what} and the failure was not "
            "undone, so the transaction cannot commit: PostgreSQL has already aborted "
            "it, and SQLite would keep only part of it. portside rolled it back; "
            "nothing of it was committed. Let the error propagate instead of catching "
            "it, or run the statement that may fail inside `session.begin_nested()` "
            "(a SAVEPOINT), which rolls back when the statement fails and lets the "
            "rest of the transaction commit."
        )


def is_database_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` means "the database cannot serve now" rather than "bad request".

    True for an exhausted pool (SQLAlchemy's pool ``TimeoutError``), a connection
    that was lost or invalidated, an operational failure reported by the driver,
    a write refused by a read-only server (SQLSTATE 25006: a demoted primary during a
    failover), and a lifecycle that is shutting down. Integrations answer these with
    503.
    """
    if isinstance(exc, PoolTimeoutError | ShuttingDownError | OperationalError):
        return True
    if not isinstance(exc, DBAPIError):
        return False
    return exc.connection_invalidated or getattr(exc.orig, "sqlstate", None) == _READ_ONLY
