"""The unit of work: portside's one commit/rollback policy.

A unit of work (one web request, one background job) opens at most one session
per database, lazily, when code first asks for it. It ends exactly once, with
:meth:`UnitOfWork.finish`: commit everything or roll everything back, then close.
Cleanup runs shielded from cancellation and bounded in time; a connection whose
cleanup fails or times out is invalidated, never returned to the pool dirty. After
the end, every session of the unit refuses further use.

Several databases are committed one after the other; there is no two-phase
commit, so a failure at the second commit cannot undo the first.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from types import TracebackType
from typing import TYPE_CHECKING, Self

import anyio
import anyio.to_thread
from sqlalchemy.exc import IllegalStateChangeError

from portside.errors import LifecycleStateError, PartialCommitError, UnitOfWorkEndedError
from portside.event_loop import on_event_loop_thread
from portside.internals import await_
from portside.serial_gate import GateHolder
from portside.sessions import ENDED_MESSAGE

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from portside.database import Database
    from portside.in_flight import InFlight
    from portside.serial_gate import SerialGate
    from portside.sessions import AsyncSession, Session

__all__ = [
    "UnitOfWork",
]

logger = logging.getLogger("portside")

_BUSY_SESSION_POLL_INTERVAL = 0.01


def _close_sync(session: Session, limit: float) -> None:
    """Close ``session`` (its transaction rolls back); invalidate if that fails.

    A framework that abandons a cancelled request's worker thread (Litestar runs
    sync handlers with ``run_in_executor``) may still be inside the session when
    we get here; SQLAlchemy then refuses with ``IllegalStateChangeError``, so wait
    for that thread, up to ``limit`` seconds, instead of racing it.
    """
    deadline = time.monotonic() + limit
    while True:
        try:
            session.close()
        except IllegalStateChangeError:
            if time.monotonic() < deadline:
                time.sleep(_BUSY_SESSION_POLL_INTERVAL)
                continue
            logger.warning("a session stayed busy in another thread; invalidating it")
        except Exception:
            logger.warning("closing a session failed; invalidating its connection", exc_info=True)
        else:
            return
        try:
            session.invalidate()
        except Exception:
            logger.exception("invalidating a session's connection failed")
        return


async def _close_async(session: AsyncSession, limit: float) -> None:
    """Close ``session`` within ``limit`` seconds; invalidate its connection otherwise."""
    closed = False
    with anyio.move_on_after(limit):
        try:
            await session.close()
            closed = True
        except Exception:
            logger.warning("closing a session failed; invalidating its connection", exc_info=True)
    if closed:
        return
    logger.warning("session cleanup did not finish cleanly; invalidating its connection")
    with anyio.move_on_after(limit):
        try:
            await session.invalidate()
        except Exception:
            logger.exception("invalidating a session's connection failed")


def _partial(done: list[str], failed: str, exc: Exception) -> PartialCommitError | None:
    """The error for a commit of ``failed`` that failed after ``done`` had committed."""
    if not done:
        return None
    logger.error(
        "database(s) %s committed, database %r did not (%s): the unit of work was saved "
        "only partly",
        ", ".join(repr(name) for name in done),
        failed,
        type(exc).__name__,
    )
    return PartialCommitError(committed=tuple(done), failed=failed)


async def _commit_step(commit: Awaitable[None], name: str, done: list[str]) -> None:
    """Await one database's commit; record it, or raise saying what was saved."""
    try:
        await commit
    except Exception as exc:
        if (partial := _partial(done, name, exc)) is None:
            raise
        raise partial from exc
    done.append(name)


class UnitOfWork:
    """One transaction per database, opened on first use and ended together.

    Get one from :meth:`portside.Lifecycle.unit_of_work`. Use it as an async
    context manager (commit on clean exit, rollback on exception) or call
    :meth:`finish` yourself, as the web integrations do once they know the
    response status.

    ``writes`` is a hint: on SQLite, units that may write begin ``IMMEDIATE``
    transactions (queued, never "database is locked"), read-only ones begin plain
    ones and run concurrently. Nothing is enforced.
    """

    def __init__(
        self,
        databases: Callable[[str | None], Database],
        in_flight: InFlight,
        *,
        writes: bool = True,
        cleanup_timeout: float,
    ) -> None:
        self._databases = databases
        self._in_flight = in_flight
        self._cleanup_timeout = cleanup_timeout
        self.writes = writes
        self._sync: dict[str, Session] = {}
        self._async: dict[str, AsyncSession] = {}
        self._gates: list[SerialGate] = []
        self._gates_lock = threading.Lock()
        self._released = False
        self._holder = GateHolder()
        self._counted = False
        self._ended = False

    @property
    def opened(self) -> bool:
        """Whether any session was opened (a unit that opened none has nothing to end)."""
        return bool(self._sync or self._async)

    @property
    def ended(self) -> bool:
        """Whether :meth:`finish` has run."""
        return self._ended

    def _database(self, name: str | None) -> Database:
        if self._ended:
            raise LifecycleStateError(
                "This unit of work has ended; open a new one for more database work."
            )
        return self._databases(name)

    def _admit(self) -> None:
        """Count this unit as in flight (once)."""
        if not self._counted:
            self._in_flight.enter()
            self._counted = True

    async def _pass(self, gates: list[SerialGate]) -> None:
        for gate in gates:
            if gate not in self._gates:
                await gate.acquire(self._holder)
                self._keep(gate)

    def _pass_blocking(self, gates: list[SerialGate]) -> None:
        for gate in gates:
            if gate not in self._gates:
                gate.acquire_blocking(self._holder)
                self._keep(gate)

    def _keep(self, gate: SerialGate) -> None:
        """Hold ``gate`` until the unit ends; give it back at once if it already has.

        A worker thread a framework abandoned (a cancelled sync handler) may get its
        turn after the unit was ended on the event loop: it must not keep it.
        """
        with self._gates_lock:
            if not self._released:
                self._gates.append(gate)
                return
        gate.release()
        raise UnitOfWorkEndedError(ENDED_MESSAGE)

    async def async_session(self, name: str | None = None) -> AsyncSession:
        """The unit's async session for database ``name`` (default: the first one).

        Handing it out does no I/O and waits for nothing: its database's gate (the
        SQLite writer's turn) is taken at its first statement, so a handler that asks
        for the session before reading a slow client's body holds up nobody.
        """
        database = self._database(name)
        session = self._async.get(database.name)
        if session is None:
            gates = database.gates(database.async_port(), writes=self.writes)
            self._admit()
            session = await database.new_async_session(writes=self.writes)
            if gates:
                # The first statement runs in SQLAlchemy's greenlet, which can await.
                session.sync_session.before_first_statement(
                    lambda: await_(self._pass(gates)), awaits=True
                )
            self._async[database.name] = session
        return session

    async def session(self, name: str | None = None) -> Session:
        """The unit's sync session for database ``name``, asked for from the event loop.

        Handing it out does no I/O; the session itself refuses to run on the event
        loop: use it only from worker threads (sync endpoints), where its first
        statement waits for its database's gate.
        """
        database = self._database(name)
        session = self._sync.get(database.name)
        if session is None:
            gates = database.gates(database.sync_port(), writes=self.writes)
            self._admit()
            session = await database.new_session(writes=self.writes)
            if gates:
                session.before_first_statement(lambda: self._pass_blocking(gates), awaits=False)
            self._sync[database.name] = session
        return session

    def session_blocking(self, name: str | None = None) -> Session:
        """Like :meth:`session`, for code already running in a worker thread."""
        if on_event_loop_thread():
            raise LifecycleStateError(
                "A sync unit of work was opened on the event loop's thread, where its "
                "blocking I/O would stall every other request. Run this code in a worker "
                "thread (e.g. anyio.to_thread.run_sync) or use async_session()."
            )
        database = self._database(name)
        session = self._sync.get(database.name)
        if session is None:
            gates = database.gates(database.sync_port(), writes=self.writes)
            self._admit()
            session = database.new_session_blocking(writes=self.writes)
            if gates:
                session.before_first_statement(lambda: self._pass_blocking(gates), awaits=False)
            self._sync[database.name] = session
        return session

    async def finish(self, *, commit: bool) -> None:
        """End the unit once: commit (or roll back) every session, then close them.

        If a commit fails, every session not yet committed is rolled back and the
        commit's exception is raised after cleanup; if an earlier database had
        already committed, it is raised as the cause of a :class:`PartialCommitError`
        saying which did and which did not (there is no two-phase commit). Calling
        it again does nothing.
        """
        if self._ended:
            return
        self._ended = True
        committed = False
        done: list[str] = []
        try:
            if commit:
                for name, async_session in self._async.items():
                    await _commit_step(async_session.commit(), name, done)
                for name, sync_session in self._sync.items():
                    await _commit_step(anyio.to_thread.run_sync(sync_session.commit), name, done)
                committed = True
        finally:
            if committed:
                self._close_committed()
            else:
                with anyio.CancelScope(shield=True):
                    await self._close_all()
            if self._async:
                # Let a unit waiting for a connection we just returned run before
                # this task goes on: a task that ends units in a loop (a job worker,
                # a benchmark's client) would otherwise take it back from the pool
                # first, every time, and its waiters would wait until the loop ends.
                # Async sessions mean asyncio, where this is the cheapest yield.
                await asyncio.sleep(0)

    def _close_committed(self) -> None:
        """Close sessions whose commit succeeded: their connections are already back.

        The common path, so it skips the shielded, bounded machinery ``_close_all``
        needs for sessions that may still hold a transaction. With no transaction
        left, closing does no I/O, so it runs directly, even for async sessions.
        """
        try:
            for async_session in self._async.values():
                async_session.mark_ended()
                async_session.sync_session.close()
            for sync_session in self._sync.values():
                sync_session.mark_ended()
                sync_session.close()
        finally:
            self._release()

    async def _close_all(self) -> None:
        timeout = self._cleanup_timeout
        try:
            for async_session in self._async.values():
                async_session.mark_ended()
                await _close_async(async_session, timeout)
            for sync_session in self._sync.values():
                sync_session.mark_ended()
                # _close_sync bounds itself; this outer bound is for a hung driver.
                with anyio.move_on_after(2 * timeout) as scope:
                    await anyio.to_thread.run_sync(
                        _close_sync, sync_session, timeout, abandon_on_cancel=True
                    )
                if scope.cancelled_caught:
                    logger.error(
                        "closing a sync session took longer than %ss; its worker thread "
                        "keeps the connection until the driver gives up",
                        timeout,
                    )
        finally:
            self._release()

    def finish_blocking(self, *, commit: bool) -> None:
        """:meth:`finish` for a unit used from a worker thread (sync sessions only)."""
        if self._ended:
            return
        self._ended = True
        if self._async:
            raise LifecycleStateError(
                "finish_blocking() cannot end async sessions; use `await finish()`."
            )
        done: list[str] = []
        try:
            if commit:
                for name, sync_session in self._sync.items():
                    try:
                        sync_session.commit()
                    except Exception as exc:
                        if (partial := _partial(done, name, exc)) is None:
                            raise
                        raise partial from exc
                    done.append(name)
        finally:
            try:
                for sync_session in self._sync.values():
                    sync_session.mark_ended()
                    _close_sync(sync_session, self._cleanup_timeout)
            finally:
                self._release()

    def _release(self) -> None:
        with self._gates_lock:
            self._released = True
            gates, self._gates = self._gates, []
        for gate in gates:
            gate.release()
        if self._counted:
            self._counted = False
            self._in_flight.leave()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.finish(commit=exc_type is None)
