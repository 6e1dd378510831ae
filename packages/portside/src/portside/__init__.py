"""portside: SQLAlchemy/SQLModel engines, sessions and units of work for ASGI apps.

Engines are built once per process at startup (:class:`Lifecycle`), each request
gets one short-lived unit of work that commits *before* the client hears "success"
(:class:`UnitOfWork`, :class:`~portside.asgi.UnitOfWorkMiddleware`), and engines are
drained and disposed at shutdown. No web framework is imported here.
"""

import logging

from portside.adapters import AsyncAdapter, PoolStatus, SyncAdapter
from portside.errors import (
    ConfigurationError,
    DriverMissingError,
    LifecycleStateError,
    PortsideError,
    ShutdownError,
    ShuttingDownError,
    StartupError,
    TransactionAbortedError,
    UnitOfWorkEndedError,
    is_database_unavailable,
)
from portside.health import DatabaseStatus, readiness
from portside.lifecycle import Lifecycle
from portside.ports import AsyncSessionPort, SessionPort
from portside.sessions import AsyncSession, Session
from portside.settings import DatabaseSettings
from portside.unit_of_work import UnitOfWork
from portside.urls import mask_url

# A library logs; the application decides where logs go (and stays silent by default).
logging.getLogger("portside").addHandler(logging.NullHandler())

__all__ = [
    "AsyncAdapter",
    "AsyncSession",
    "AsyncSessionPort",
    "ConfigurationError",
    "DatabaseSettings",
    "DatabaseStatus",
    "DriverMissingError",
    "Lifecycle",
    "LifecycleStateError",
    "PoolStatus",
    "PortsideError",
    "Session",
    "SessionPort",
    "ShutdownError",
    "ShuttingDownError",
    "StartupError",
    "SyncAdapter",
    "TransactionAbortedError",
    "UnitOfWork",
    "UnitOfWorkEndedError",
    "is_database_unavailable",
    "mask_url",
    "readiness",
]
