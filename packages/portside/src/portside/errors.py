"""Every exception portside raises on purpose.

Messages say what happened and what to do next, and never contain a password:
URLs in them are always masked first.
"""

from __future__ import annotations

from sqlalchemy.exc import InvalidRequestError

__all__ = [
    "BlockingSessionError",
    "ConfigurationError",
    "DriverMissingError",
    "GateDeadlockError",
    "LifecycleStateError",
    "NoRequestSessionError",
    "PartialCommitError",
    "PortsideError",
    "ReadOnlyUnitWriteError",
    "ShutdownError",
    "ShuttingDownError",
    "StartupError",
    "TransactionAbortedError",
    "UnitOfWorkEndedError",
    "is_database_unavailable",
]


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


class PartialCommitError(PortsideError):
    """A unit of work over several databases committed some of them, not all.

    portside commits one database after the other (there is no two-phase commit),
    so when a later commit fails the earlier ones stay committed. The failed
    commit's exception is the ``__cause__``.
    """

    def __init__(self, *, committed: tuple[str, ...], failed: str) -> None:
        self.committed = committed
        self.failed = failed
        names = ", ".join(repr(name) for name in committed)
        super().__init__(
            f"Database(s) {names} committed, but the commit of database {failed!r} failed, "
            "so the change was saved only partly (portside commits several databases one "
            "after the other, with no two-phase commit). Make the work on the later "
            "database safe to repeat, or keep one change in one database."
        )


class GateDeadlockError(PortsideError):
    """Two units of work waited for each other's SQLite writer turn; this one gave up.

    Nothing was committed by the unit that raised it; the request may be retried.
    """


class BlockingSessionError(PortsideError, RuntimeError):
    """A sync session was used on an event loop's thread, where its I/O would block."""


class NoRequestSessionError(PortsideError, RuntimeError):
    """Code asked for a request's session where there is no request unit of work.

    A websocket has no request to end its unit of work with; an app whose lifespan
    never ran (a mounted sub-app) has no lifecycle to open one from.
    """


class ReadOnlyUnitWriteError(PortsideError):
    """A write in a unit of work hinted read-only met a lock it could not wait for.

    On SQLite, read-only units (``writes=False``; the web integrations' GET, HEAD,
    OPTIONS and TRACE requests) begin plain ``BEGIN`` transactions so they can run
    concurrently; once such a transaction has read, its first write cannot wait for
    the lock another writer took, and SQLite refuses it at once. A bug in where the
    write is made, not an outage. The driver's error is the ``__cause__``.
    """


def is_database_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` is the database's failure, not a bug: portside answers it itself.

    True for every row of :mod:`portside.failures` but "bug": the database cannot
    serve now (503: unreachable, connection lost, pool exhausted, read-only server,
    shutting down, SQLite locked past its busy timeout), a concurrent transaction
    won (409: serialization failure, deadlock, lock not available), or the
    statement timed out (504). :func:`portside.asgi.error_response` gives the status
    and body; the same request, retried, may succeed.
    """
    from portside.failures import Kind, classify  # noqa: PLC0415 - it imports this module

    return classify(exc).kind is not Kind.BUG
