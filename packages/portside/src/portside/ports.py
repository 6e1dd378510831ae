"""Ports: the contract between portside's core and a database backend.

The unit of work and the lifecycle talk to a backend only through these two
protocols, one per kind of engine; the SQLite and PostgreSQL adapters implement
them, and a new backend is one module that does too, registered with
:func:`portside.register_backend`. A port hands out *new* sessions and knows its
engine's health; it never commits, rolls back or closes anything on its own:
that policy is the unit of work's, so no session can go around it. A port has no
``close()`` either: the :class:`~portside.Lifecycle` disposes it at shutdown.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

    from portside.pool_status import PoolStatus
    from portside.serial_gate import SerialGate
    from portside.sessions import AsyncSession, Session

__all__ = ["AsyncSessionPort", "SessionPort"]


@runtime_checkable
class SessionPort(Protocol):
    """One synchronous engine of a backend, as the unit of work uses it."""

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (for ``metadata.create_all(engine)``, Alembic, ...)."""
        ...

    @property
    def masked_url(self) -> str:
        """The engine's URL with any password replaced by ``***``."""
        ...

    def gate_for(self, *, writes: bool) -> SerialGate | None:
        """The gate a unit of work must pass before using this engine (``None``: none)."""
        ...

    def new_session(self, *, writes: bool, bind: Connection | None = None) -> Session:
        """A new, unused session; ``bind`` is a connection to join through SAVEPOINTs."""
        ...

    def ping(self) -> float:
        """Run a trivial statement on a pooled connection; return seconds taken."""
        ...

    def verify(self) -> None:
        """Check once, at startup, that the backend's defaults took effect."""
        ...

    def pool_status(self) -> PoolStatus:
        """The pool's counters, without touching a connection."""
        ...

    def dispose(self) -> None:
        """Close every pooled connection."""
        ...


@runtime_checkable
class AsyncSessionPort(Protocol):
    """One asyncio engine of a backend, as the unit of work uses it."""

    @property
    def engine(self) -> AsyncEngine:
        """The SQLAlchemy async engine."""
        ...

    @property
    def masked_url(self) -> str:
        """The engine's URL with any password replaced by ``***``."""
        ...

    def gate_for(self, *, writes: bool) -> SerialGate | None:
        """The gate a unit of work must pass before using this engine (``None``: none)."""
        ...

    def new_session(self, *, writes: bool, bind: AsyncConnection | None = None) -> AsyncSession:
        """A new, unused session; ``bind`` is a connection to join through SAVEPOINTs."""
        ...

    async def ping(self) -> float:
        """Run a trivial statement on a pooled connection; return seconds taken."""
        ...

    async def verify(self) -> None:
        """Check once, at startup, that the backend's defaults took effect."""
        ...

    def pool_status(self) -> PoolStatus:
        """The pool's counters, without touching a connection."""
        ...

    async def dispose(self) -> None:
        """Close every pooled connection."""
        ...
