"""The seam a test kit plugs into: where a lifecycle's sessions take their connections.

Production code never sets a binding. A test kit (``portside_testing``) sets one
around an app's start with :func:`use_binding`; every :class:`~portside.Lifecycle`
*started* in that context (an app's lifespan included: tasks inherit the context)
reads it once, tells it it started, and from then on opens its units' sessions on
the connections the binding hands out instead of the pool's, taking turns through
the binding's gate. At shutdown the lifecycle asks the binding to let go of them.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from sqlalchemy import Connection, Engine
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

    from portside.database import Database
    from portside.lifecycle import Lifecycle
    from portside.serial_gate import SerialGate

__all__ = ["ConnectionBinding", "current_binding", "use_binding"]


class ConnectionBinding(Protocol):
    """What a lifecycle asks of a binding (see the module docstring)."""

    #: A gate every unit of work of a bound lifecycle passes first (``None``: none).
    gate: SerialGate | None

    def lifecycle_started(self, lifecycle: Lifecycle) -> None:
        """Called once when a lifecycle started in this binding's context is running."""
        ...

    async def async_connection(self, engine: AsyncEngine) -> AsyncConnection | None:
        """The connection an async session on ``engine`` joins (``None``: the pool's)."""
        ...

    def sync_connection(self, engine: Engine) -> Connection | None:
        """The connection a sync session on ``engine`` joins; may block (worker thread)."""
        ...

    async def lifecycle_stopping(self, databases: Sequence[Database]) -> list[str]:
        """Let go of a stopping lifecycle's connections before its engines are disposed.

        Returns one line per failure (no secrets); the lifecycle reports them.
        """
        ...


_current: ContextVar[ConnectionBinding | None] = ContextVar("portside_binding", default=None)


def current_binding() -> ConnectionBinding | None:
    """The binding lifecycles started in this context use, if any."""
    return _current.get()


@contextmanager
def use_binding(binding: ConnectionBinding) -> Iterator[ConnectionBinding]:
    """Make lifecycles started inside this block use ``binding``."""
    token = _current.set(binding)
    try:
        yield binding
    finally:
        _current.reset(token)
