"""The session classes portside hands out.

They are SQLModel's ``Session`` and ``AsyncSession`` (so ``session.exec(select(...))``
works, and SQLAlchemy-only models work too) with one addition: once the unit of
work that owns a session has ended, the session refuses further use with
:class:`~portside.errors.UnitOfWorkEndedError`. A plain closed SQLAlchemy session
silently begins a new transaction instead, checking out a connection that nobody
will ever return.
"""

from __future__ import annotations

from sqlalchemy.orm import SessionTransaction
from sqlmodel import Session as _SQLModelSession
from sqlmodel.ext.asyncio.session import AsyncSession as _SQLModelAsyncSession

from portside.errors import UnitOfWorkEndedError

_ENDED_MESSAGE = (
    "This session belonged to a unit of work that has already ended (for a web "
    "request: the response was already decided), so its transaction is over and its "
    "connection is back in the pool. Code that runs later, such as a background task "
    "or a streaming body, must open its own unit of work, e.g. "
    "`async with lifecycle.async_session() as session: ...`."
)


class Session(_SQLModelSession):
    """A SQLModel ``Session`` that cannot be used after its unit of work ended."""

    _portside_ended: bool = False

    def _autobegin_t(self, begin: bool = False) -> SessionTransaction:
        # The one place every query, flush and connection() goes through before it
        # needs a transaction: refusing here covers them all.
        if self._portside_ended:
            raise UnitOfWorkEndedError(_ENDED_MESSAGE)
        return super()._autobegin_t(begin)

    def mark_ended(self) -> None:
        """Make every later use raise :class:`~portside.errors.UnitOfWorkEndedError`."""
        self._portside_ended = True


class AsyncSession(_SQLModelAsyncSession):
    """A SQLModel ``AsyncSession`` that cannot be used after its unit of work ended."""

    # SQLAlchemy builds the wrapped session from this class attribute.
    sync_session_class: type[Session] = Session
    sync_session: Session

    def mark_ended(self) -> None:
        """Make every later use raise :class:`~portside.errors.UnitOfWorkEndedError`."""
        self.sync_session.mark_ended()
