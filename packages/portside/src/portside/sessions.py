"""The session classes portside hands out.

They are SQLModel's ``Session`` and ``AsyncSession`` (so ``session.exec(select(...))``
works, and SQLAlchemy-only models work too) with two additions:

* once the unit of work that owns a session has ended, the session refuses further
  use with :class:`~portside.errors.UnitOfWorkEndedError`. A plain closed SQLAlchemy
  session silently begins a new transaction instead, checking out a connection that
  nobody will ever return;
* a *sync* session refuses to do I/O on an event loop's thread
  (:class:`~portside.errors.BlockingSessionError`), where it would stall every
  other request: for example a sync session asked for by an ``async def`` endpoint.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.orm import SessionTransaction
from sqlmodel import Session as _SQLModelSession
from sqlmodel.ext.asyncio.session import AsyncSession as _SQLModelAsyncSession

from portside.errors import BlockingSessionError, UnitOfWorkEndedError
from portside.event_loop import on_event_loop_thread
from portside.internals import in_greenlet

__all__ = ["AsyncSession", "Session"]

ENDED_MESSAGE = (
    "This session belonged to a unit of work that has already ended (for a web "
    "request: the response was already decided), so its transaction is over and its "
    "connection is back in the pool. Code that runs later, such as a background task "
    "or a streaming body, must open its own unit of work, e.g. "
    "`async with lifecycle.async_session() as session: ...`."
)
_ON_EVENT_LOOP_MESSAGE = (
    "A sync session was used on the event loop's thread, where its I/O would stall "
    "every other request while it waits for the database. Use it only in a worker "
    "thread (a `def` endpoint, or `await anyio.to_thread.run_sync(work, session)`), "
    "or use the async session in `async def` code."
)


class _EndableSession(_SQLModelSession):
    """A SQLModel ``Session`` that cannot be used after its unit of work ended."""

    _portside_ended: bool = False
    _portside_before_first_statement: Callable[[], object] | None = None
    _portside_hook_awaits: bool = False

    def _autobegin_t(self, begin: bool = False) -> SessionTransaction:
        # The one place every add, query, flush and connection() goes through before
        # it needs a transaction: refusing here covers them all.
        if self._portside_ended:
            raise UnitOfWorkEndedError(ENDED_MESSAGE)
        self._pass_gates()
        return super()._autobegin_t(begin)

    def _connection_for_bind(
        self, engine: Any, execution_options: Any = None, **kw: Any
    ) -> Connection:
        # A statement in a transaction that add() began (outside the greenlet, so
        # without waiting) gets its connection here, still before any I/O.
        self._pass_gates()
        return super()._connection_for_bind(engine, execution_options, **kw)

    def _pass_gates(self) -> None:
        hook = self._portside_before_first_statement
        if hook is None or (self._portside_hook_awaits and not in_greenlet()):
            return  # nothing to wait for, or add(): no I/O yet, a later call waits
        hook()
        self._portside_before_first_statement = None  # only once it has succeeded

    def before_first_statement(self, hook: Callable[[], object], *, awaits: bool) -> None:
        """Run ``hook`` before the session first needs a connection (the unit's gates).

        ``awaits``: the hook awaits through SQLAlchemy's greenlet (an async session's),
        so it runs only where one is running; ``add()``, which needs no connection,
        leaves it to the next statement or flush.
        """
        self._portside_before_first_statement = hook
        self._portside_hook_awaits = awaits

    def mark_ended(self) -> None:
        """Make every later use raise :class:`~portside.errors.UnitOfWorkEndedError`."""
        self._portside_ended = True


class Session(_EndableSession):
    """portside's sync session: never used after its unit, never on an event loop."""

    def _autobegin_t(self, begin: bool = False) -> SessionTransaction:
        if on_event_loop_thread():
            raise BlockingSessionError(_ON_EVENT_LOOP_MESSAGE)
        return super()._autobegin_t(begin)


class AsyncSession(_SQLModelAsyncSession):
    """A SQLModel ``AsyncSession`` that cannot be used after its unit of work ended."""

    # SQLAlchemy builds the wrapped session from this class attribute; it runs on the
    # event loop's thread by design (in greenlets), so it is not a `Session`.
    sync_session_class: type[_EndableSession] = _EndableSession
    sync_session: _EndableSession

    def mark_ended(self) -> None:
        """Make every later use raise :class:`~portside.errors.UnitOfWorkEndedError`."""
        self.sync_session.mark_ended()
