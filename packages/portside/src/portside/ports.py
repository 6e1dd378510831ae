"""Ports: what the rest of an application needs from a database, and nothing more.

A port hands out a session as a context manager. It has no ``close()``: engines
belong to the :class:`~portside.Lifecycle`, which disposes them at shutdown.
"""

from __future__ import annotations

from contextlib import AbstractAsyncContextManager, AbstractContextManager
from typing import Protocol, runtime_checkable

from sqlmodel import Session
from sqlmodel.ext.asyncio.session import AsyncSession


@runtime_checkable
class SessionPort(Protocol):
    """Hands out synchronous sessions."""

    def session(self) -> AbstractContextManager[Session]:
        """Return a context manager that yields a new session and closes it on exit."""
        ...


@runtime_checkable
class AsyncSessionPort(Protocol):
    """Hands out asynchronous sessions."""

    def session(self) -> AbstractAsyncContextManager[AsyncSession]:
        """Return an async context manager yielding a new session, closed on exit."""
        ...
