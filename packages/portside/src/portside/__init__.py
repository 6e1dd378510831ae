"""portside: SQLAlchemy/SQLModel engines, sessions and units of work for ASGI apps.

Engines are built once per process at startup (:class:`Lifecycle`), each request
gets one short-lived unit of work that commits *before* the client hears "success"
(:class:`UnitOfWork`, :class:`~portside.asgi.UnitOfWorkMiddleware`), and engines are
drained and disposed at shutdown. No web framework is imported here.
"""

import importlib.metadata
import logging

import portside.deadlines  # noqa: F401 - installs the deadline listener on sessions
from portside.backends import Backend, register_backend
from portside.binding import ConnectionBinding, current_binding, use_binding
from portside.database import Database
from portside.errors import (
    BlockingSessionError,
    ConfigurationError,
    DriverMissingError,
    GateDeadlockError,
    LifecycleStateError,
    NoRequestSessionError,
    PartialCommitError,
    PortsideError,
    ReadOnlyUnitWriteError,
    ReplicaWriteError,
    ShutdownError,
    ShuttingDownError,
    StartupError,
    TransactionAbortedError,
    UnitOfWorkEndedError,
    is_database_unavailable,
)
from portside.health import DatabaseStatus, readiness
from portside.hooks import on_commit, on_rollback
from portside.lifecycle import Databases, Lifecycle
from portside.pool_status import PoolStatus
from portside.ports import AsyncSessionPort, SessionPort
from portside.replicas import ReplicaState, ReplicaStatus
from portside.retries import RetryPolicy
from portside.serial_gate import SerialGate
from portside.sessions import AsyncSession, Session
from portside.settings import DatabaseSettings
from portside.unit_of_work import UnitOfWork
from portside.urls import mask_url

#: The installed distribution's version (from its metadata: pyproject.toml is the one source).
__version__ = importlib.metadata.version("portside")

# No NullHandler: with none configured, Python's last-resort handler prints
# portside's warnings (every response it substitutes, every database it finds down)
# to stderr, so a server run with its default logging still shows them. An app that
# configures logging decides where they go.
logging.getLogger("portside")

__all__ = [
    "AsyncSession",
    "AsyncSessionPort",
    "Backend",
    "BlockingSessionError",
    "ConfigurationError",
    "ConnectionBinding",
    "Database",
    "DatabaseSettings",
    "DatabaseStatus",
    "Databases",
    "DriverMissingError",
    "GateDeadlockError",
    "Lifecycle",
    "LifecycleStateError",
    "NoRequestSessionError",
    "PartialCommitError",
    "PoolStatus",
    "PortsideError",
    "ReadOnlyUnitWriteError",
    "ReplicaState",
    "ReplicaStatus",
    "ReplicaWriteError",
    "RetryPolicy",
    "SerialGate",
    "Session",
    "SessionPort",
    "ShutdownError",
    "ShuttingDownError",
    "StartupError",
    "TransactionAbortedError",
    "UnitOfWork",
    "UnitOfWorkEndedError",
    "current_binding",
    "is_database_unavailable",
    "mask_url",
    "on_commit",
    "on_rollback",
    "readiness",
    "register_backend",
    "use_binding",
]
