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
