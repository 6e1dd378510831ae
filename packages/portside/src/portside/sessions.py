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

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from sqlalchemy import Connection, Engine, event
from sqlalchemy.orm import ORMExecuteState, SessionTransaction
from sqlalchemy.orm import Session as _SASession
from sqlalchemy.pool import QueuePool
from sqlmodel import Session as _SQLModelSession
from sqlmodel.ext.asyncio.session import AsyncSession as _SQLModelAsyncSession

from portside.errors import BlockingSessionError, UnitOfWorkEndedError
from portside.event_loop import on_event_loop_thread
from portside.internals import in_greenlet

if TYPE_CHECKING:
    from portside.unit_of_work import UnitOfWork

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
    # Replica routing: decided once, when the session first needs a connection.
    _portside_route: Callable[[], Engine | None] | None = None
    _portside_routed: Engine | None = None
    _portside_route_failed: Callable[[BaseException], None] | None = None
    # Read-your-writes: the connection of a write, whose WAL position is read after COMMIT.
    _portside_track_position: Callable[[Connection], None] | None = None
    _portside_wrote: bool = False
    # Engine -> the connection the unit's session keeps across its transactions.
    _portside_kept: dict[Engine, Connection] | None = None

    def get_bind(self, *args: Any, **kw: Any) -> Any:
        # Every statement and flush asks here for its engine just before connecting,
        # so a unit routed to a replica decides at its first query, not before.
        if self._portside_route is not None and kw.get("bind") is None:
            route, self._portside_route = self._portside_route, None
            self._portside_routed = route()
        if self._portside_routed is not None and kw.get("bind") is None:
            bind: Any = self._portside_routed
        else:
            bind = super().get_bind(*args, **kw)
        kept = self._portside_kept
        if (
            kept is not None
            and (connection := kept.get(bind)) is not None
            and not connection.closed
            and not self._portside_ended
        ):
            return connection  # every statement after the first: one look-up
        if not self._keeps_connection(bind):
            return bind
        try:
            return self._kept_connection(bind)
        except Exception as exc:
            # asyncpg's refused connection is a bare OSError that never reaches the
            # engine's handle_error event: tell the route here.
            if bind is self._portside_routed and self._portside_route_failed is not None:
                self._portside_route_failed(exc)
            raise

    def _keeps_connection(self, bind: Any) -> bool:
        """Whether statements on ``bind`` use a connection the session keeps.

        A unit's session on a PostgreSQL engine, before the unit ended, where it can
        check out (an async engine only from inside SQLAlchemy's greenlet).
        """
        return (
            self._portside_unit is not None
            and not self._portside_ended
            and isinstance(bind, Engine)
            and bind.dialect.name == "postgresql"
            and (not bind.dialect.is_async or in_greenlet())
        )

    def route_reads(
        self, route: Callable[[], Engine | None], failed: Callable[[BaseException], None]
    ) -> None:
        """Let ``route`` pick this session's engine (a replica's, or ``None``: as built).

        ``route`` is called once, when the session first needs a connection;
        ``failed`` with the error if connecting to the engine it picked fails.
        """
        self._portside_route = route
        self._portside_route_failed = failed

    @property
    def routed(self) -> bool:
        """Whether this session reads from an engine a route picked (a replica)."""
        return self._portside_routed is not None

    @property
    def route_pending(self) -> bool:
        """Whether the route has not been asked yet (no statement has run)."""
        return self._portside_route is not None

    def cancel_route(self) -> None:
        """Use the engine the session was built with (the primary) after all."""
        self._portside_route = None

    def track_commit_position(self, read: Callable[[Connection], None]) -> None:
        """Call ``read(connection)`` right after a COMMIT of a transaction that wrote.

        ``connection`` has committed and not yet gone back to the pool.
        """
        self._portside_track_position = read
        event.listen(self, "do_orm_execute", _note_write)

    def connection(self, *args: Any, **kw: Any) -> Connection:
        # Statements run on the connection directly pass no session event: count
        # them as writes (at worst one needless round trip after the commit).
        if self._portside_track_position is not None:
            self._portside_wrote = True
        return super().connection(*args, **kw)

    def _flush(self, objects: Any = None) -> None:
        super()._flush(objects)
        if self._portside_track_position is not None:
            self._portside_wrote = True

    #: The unit of work that owns the session (None: a session of no unit).
    _portside_unit: UnitOfWork | None = None
    #: When the unit's deadline passes (``time.monotonic()``), if it has one.
    _portside_deadline: float | None = None
    #: The name of the session's database in its unit.
    _portside_database: str | None = None

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
        if self._portside_routed is not None:
            return self._connection_for_bind_routed(engine, execution_options, **kw)
        return super()._connection_for_bind(engine, execution_options, **kw)

    def _kept_connection(self, engine: Engine) -> Connection:
        """The connection this unit's session keeps checked out from ``engine``.

        A route that commits mid-request and goes on working begins its next
        transaction on the same connection: one checkout per unit, not one per
        transaction. :meth:`get_bind` hands it to every statement and flush as their
        bind; the session does not close a connection it was handed, so it is
        returned when the session closes (:meth:`close`), after the unit's gates
        were passed as before any checkout.
        """
        self._pass_gates()
        kept = self._portside_kept
        if kept is None:
            kept = self._portside_kept = {}
        connection = kept.get(engine)
        if connection is None or connection.closed:
            connection = engine.connect()
            if self._portside_ended or self._portside_kept is not kept:
                # The unit ended while this checkout waited for a connection (a client
                # that left): nobody would return it.
                connection.close()
                raise UnitOfWorkEndedError(ENDED_MESSAGE)
            kept[engine] = connection
        return connection

    @property
    def pool_may_have_waiters(self) -> bool:
        """Whether a task may be waiting for a connection of this session's pool.

        Read right after the session returned its connection. A queue pool makes a
        task wait only when every connection it may open is checked out, so at
        least ``size - 1`` are still out after one came back (``size`` is a lower
        bound of what it may open). Any other pool, or a session bound to a
        connection: maybe.
        """
        bind = self._portside_routed or self.bind
        pool = getattr(bind, "pool", None)
        if not isinstance(pool, QueuePool):
            return True
        return pool.checkedout() + 1 >= pool.size()

    @property
    def keeps_connections(self) -> bool:
        """Whether the session holds connections across its transactions (returned by close)."""
        return bool(self._portside_kept)

    def close(self) -> None:
        """Close the session, then return the connections it kept to the pool."""
        try:
            super().close()
        finally:
            self._return_kept(invalidate=False)

    def invalidate(self) -> None:
        """Invalidate the session's connections, the kept ones included."""
        try:
            super().invalidate()
        finally:
            self._return_kept(invalidate=True)

    def _return_kept(self, *, invalidate: bool) -> None:
        """Return every kept connection; one whose return fails is dropped, never pooled.

        A cancelled or failed rollback on the way back (a request whose client left)
        would otherwise leave the connection neither pooled nor closed.
        """
        kept, self._portside_kept = self._portside_kept, None
        failure: BaseException | None = None
        for connection in (kept or {}).values():
            try:
                if invalidate:
                    connection.invalidate()
                connection.close()
            except BaseException as exc:  # cancellation too: drop the connection, then go on
                failure = failure or exc
                with contextlib.suppress(Exception):
                    connection.invalidate()
                    connection.close()
        if failure is not None:
            raise failure

    def _connection_for_bind_routed(
        self, engine: Any, execution_options: Any, **kw: Any
    ) -> Connection:
        try:
            return super()._connection_for_bind(engine, execution_options, **kw)
        except Exception as exc:
            # asyncpg's refused connection is a bare OSError that never reaches the
            # engine's handle_error event: tell the route here.
            if self._portside_route_failed is not None:
                self._portside_route_failed(exc)
            raise

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
        """Make every later use raise :class:`~portside.errors.UnitOfWorkEndedError`.

        Also drops what leads back to the unit (which holds this session), so the
        two are freed as soon as the request lets go of them, not by the cyclic
        garbage collector: a collection of every request's unit and sessions cost
        more than a tenth of a PostgreSQL request.
        """
        self._portside_ended = True
        self._portside_unit = None
        self._portside_before_first_statement = None
        self._portside_route = None
        self._portside_route_failed = None
        self._portside_track_position = None


def _note_write(state: ORMExecuteState) -> None:
    # Anything but a SELECT may write (text() too): one extra round trip at worst.
    if not state.is_select and isinstance(state.session, _EndableSession):
        state.session._portside_wrote = True


@event.listens_for(_EndableSession, "after_commit")
def _read_commit_position(session: _SASession) -> None:
    if not isinstance(session, _EndableSession) or not session._portside_wrote:
        return
    session._portside_wrote = False
    read = session._portside_track_position
    transaction = session.get_transaction()
    if read is None or transaction is None:
        return
    # The committed transaction's connections are still checked out here; the
    # session returns them to the pool right after this event.
    for connection, *_ in transaction._connections.values():
        read(connection)


@event.listens_for(_EndableSession, "after_rollback")
def _forget_write(session: _SASession) -> None:
    if isinstance(session, _EndableSession):
        session._portside_wrote = False


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
