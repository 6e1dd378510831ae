"""What every adapter is: one engine, one sessionmaker, a ping and a disposal.

Backend modules (``sqlite``, ``postgresql``) subclass these and add their defaults;
everything that does not depend on the backend lives here.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, create_engine
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import sessionmaker

from portside.adapters.failed_statements import install as refuse_commits_after_failures
from portside.pool_status import PoolStatus, pool_status
from portside.sessions import AsyncSession, Session
from portside.urls import mask_url

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

    from portside.serial_gate import SerialGate
    from portside.settings import DatabaseSettings

__all__ = [
    "AsyncAdapter",
    "SyncAdapter",
]


class _Adapter:
    """State and behaviour shared by the sync and async adapters."""

    #: Set for backends whose units of work must take turns (SQLite; see ``gate_for``).
    gate: SerialGate | None = None

    def gate_for(self, *, writes: bool) -> SerialGate | None:
        """The gate a unit of work passes before using this database, if any."""
        return self.gate

    def __init__(self, settings: DatabaseSettings, url: URL) -> None:
        self.settings = settings
        self.url = url

    @property
    def masked_url(self) -> str:
        """The engine's URL with any password replaced by ``***``."""
        return mask_url(self.url)

    @property
    def driver(self) -> str:
        """The DBAPI driver's name, e.g. ``asyncpg``."""
        return self.url.get_driver_name()

    @property
    def pings_on_checkout(self) -> bool:
        """Whether a pooled connection is checked before each use (pre-ping)."""
        return bool(self.engine_options().get("pool_pre_ping"))

    def engine_options(self) -> dict[str, Any]:
        """Keyword arguments for ``create_engine``; backends extend them."""
        return {"echo": self.settings.echo, "hide_parameters": self.settings.hide_parameters}

    def pooling_options(self) -> dict[str, Any]:
        """The pool knobs of :class:`~portside.DatabaseSettings` for a queue pool."""
        s = self.settings
        return {
            "pool_size": s.pool_size,
            "max_overflow": s.max_overflow,
            "pool_timeout": s.pool_timeout,
            "pool_recycle": s.pool_recycle,
            "pool_pre_ping": s.pool_pre_ping,
        }


class SyncAdapter(_Adapter):
    """Owns one synchronous engine and its sessionmaker.

    Implements :class:`~portside.SessionPort`. Sessions are
    :class:`portside.sessions.Session` with ``expire_on_commit=False``.
    """

    def __init__(self, settings: DatabaseSettings, url: URL) -> None:
        super().__init__(settings, url)
        self.engine: Engine = create_engine(url, **self.engine_options())
        self.configure(self.engine)
        refuse_commits_after_failures(self.engine)
        self._sessionmaker = self.sessionmaker_for(self.engine)

    @staticmethod
    def sessionmaker_for(bind: Engine) -> sessionmaker[Session]:
        """The sessionmaker portside uses: its ``Session``, no expiry on commit."""
        return sessionmaker(bind, class_=Session, expire_on_commit=False, close_resets_only=False)

    def configure(self, engine: Engine) -> None:
        """Install backend event listeners on a new engine (none by default)."""

    def new_session(self, *, writes: bool, bind: Connection | None = None) -> Session:
        """Return a new session; ``writes`` hints whether it may write (see SQLite).

        With ``bind``, the session joins that connection's transaction through
        SAVEPOINTs (see :mod:`portside.binding`).
        """
        if bind is not None:
            return self._sessionmaker(bind=bind, join_transaction_mode="create_savepoint")
        return self._sessionmaker()

    def ping(self) -> float:
        """Run ``SELECT 1`` on a pooled connection; return the round trip in seconds."""
        started = time.perf_counter()
        with self.engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")
        return time.perf_counter() - started

    def verify(self) -> None:
        """Check once, at startup, that the backend's defaults took effect."""
        with self.engine.connect() as connection:
            self.verify_connection(connection)

    def verify_connection(self, connection: Connection) -> None:
        """Raise :class:`~portside.errors.StartupError` if ``connection`` lacks a default."""

    def pool_status(self) -> PoolStatus:
        """The pool's current counters."""
        return pool_status(self.engine)

    def dispose(self) -> None:
        """Close every pooled connection and release the engine's resources."""
        self.engine.dispose()


class AsyncAdapter(_Adapter):
    """Owns one asynchronous engine and its sessionmaker.

    Implements :class:`~portside.AsyncSessionPort`. Sessions are
    :class:`portside.sessions.AsyncSession` with ``expire_on_commit=False``.
    """

    def __init__(self, settings: DatabaseSettings, url: URL) -> None:
        super().__init__(settings, url)
        self.engine: AsyncEngine = create_async_engine(url, **self.engine_options())
        self.configure(self.engine.sync_engine)
        refuse_commits_after_failures(self.engine.sync_engine)
        self._sessionmaker = self.sessionmaker_for(self.engine)

    @staticmethod
    def sessionmaker_for(bind: AsyncEngine) -> async_sessionmaker[AsyncSession]:
        """The sessionmaker portside uses: its ``AsyncSession``, no expiry on commit."""
        return async_sessionmaker(
            bind, class_=AsyncSession, expire_on_commit=False, close_resets_only=False
        )

    def configure(self, engine: Engine) -> None:
        """Install backend event listeners on the new engine's sync core (none by default)."""

    def new_session(self, *, writes: bool, bind: AsyncConnection | None = None) -> AsyncSession:
        """Return a new session; ``writes`` hints whether it may write (see SQLite).

        With ``bind``, the session joins that connection's transaction through
        SAVEPOINTs (see :mod:`portside.binding`).
        """
        if bind is not None:
            return self._sessionmaker(bind=bind, join_transaction_mode="create_savepoint")
        return self._sessionmaker()

    async def ping(self) -> float:
        """Run ``SELECT 1`` on a pooled connection; return the round trip in seconds."""
        started = time.perf_counter()
        async with self.engine.connect() as connection:
            await connection.exec_driver_sql("SELECT 1")
        return time.perf_counter() - started

    async def verify(self) -> None:
        """Check once, at startup, that the backend's defaults took effect."""
        async with self.engine.connect() as connection:
            await connection.run_sync(self.verify_connection)

    def verify_connection(self, connection: Connection) -> None:
        """Raise :class:`~portside.errors.StartupError` if ``connection`` lacks a default."""

    def pool_status(self) -> PoolStatus:
        """The pool's current counters."""
        return pool_status(self.engine.sync_engine)

    async def dispose(self) -> None:
        """Close every pooled connection and release the engine's resources."""
        await self.engine.dispose()
