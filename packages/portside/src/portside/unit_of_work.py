"""The unit of work: portside's one commit/rollback policy.

A unit of work (one web request, one background job) opens at most one session
per database, lazily, when code first asks for it. It ends exactly once, with
:meth:`UnitOfWork.finish`: commit everything or roll everything back, then close.
Cleanup runs shielded from cancellation and bounded in time; a connection whose
cleanup fails or times out is invalidated, never returned to the pool dirty. After
the end, every session of the unit refuses further use.

Several databases are committed one after the other; there is no two-phase
commit, so a failure at the second commit cannot undo the first.

A unit may also carry after-commit and after-rollback callbacks
(:mod:`portside.hooks`), a transaction isolation level, a deadline the database
enforces (:mod:`portside.deadlines`) and a retry policy (:mod:`portside.retries`,
which whoever runs the unit's code applies: :meth:`portside.Lifecycle.run`, the
web middleware).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

import anyio
import anyio.to_thread
from sqlalchemy import Connection
from sqlalchemy.exc import IllegalStateChangeError

from portside import hooks, interrupts
from portside.adapters.postgresql import wal_position
from portside.errors import LifecycleStateError, PartialCommitError, UnitOfWorkEndedError
from portside.event_loop import on_event_loop_thread
from portside.internals import await_, in_greenlet
from portside.replicas import PRIMARY_POSITION_QUERY, parse_lsn
from portside.retries import Retries, RetryPolicy, RetryReason
from portside.serial_gate import GateHolder
from portside.sessions import ENDED_MESSAGE

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from sqlalchemy import Connection, Engine
    from sqlalchemy.orm import SessionTransaction

    from portside.database import Database
    from portside.in_flight import InFlight
    from portside.replicas import Replica
    from portside.serial_gate import SerialGate
    from portside.sessions import AsyncSession, Session, _EndableSession

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


class UnitOfWork:
    """One transaction per database, opened on first use and ended together.

    Get one from :meth:`portside.Lifecycle.unit_of_work`. Use it as an async
    context manager (commit on clean exit, rollback on exception) or call
    :meth:`finish` yourself, as the web integrations do once they know the
    response status.

    ``writes`` is a hint: on SQLite, units that may write begin ``IMMEDIATE``
    transactions (queued, never "database is locked"), read-only ones begin plain
    ones and run concurrently. Nothing is enforced. On a database with read
    replicas, a read-only unit reads from one (see :mod:`portside.replicas`) unless
    :meth:`use_primary` was called before its first query; a write there raises
    :class:`~portside.ReplicaWriteError`.

    ``isolation_level`` (e.g. ``"SERIALIZABLE"``) applies to every transaction of
    the unit (not under the test kit's outer transaction, whose level rules).
    ``deadline``: seconds from the unit's creation after which the database stops
    its statements (default: each database's ``DATABASE_DEADLINE``; see
    :mod:`portside.deadlines`). ``retries``: the :class:`~portside.RetryPolicy` (or
    number of retries) whoever runs the unit applies. All three can be changed with
    :meth:`configure` until the unit's first statement.
    """

    def __init__(
        self,
        databases: Callable[[str | None], Database],
        in_flight: InFlight,
        *,
        writes: bool = True,
        cleanup_timeout: float,
        request: Mapping[str, Any] | None = None,
        positions: Mapping[str, int] | None = None,
        isolation_level: str | None = None,
        deadline: float | None = None,
        retries: Retries = None,
    ) -> None:
        self._databases = databases
        #: The ASGI scope of the request this unit serves, if any (telemetry reads
        #: its route).
        self.request = request
        self._in_flight = in_flight
        self._cleanup_timeout = cleanup_timeout
        self.writes = writes
        self._started = time.monotonic()
        self.isolation_level = isolation_level
        self.deadline = deadline
        #: The retry policy of the code running this unit (``None``: no retries).
        self.retry_policy = None if retries is None else RetryPolicy.of(retries)
        self._hooks: hooks.Hooks | None = None
        self._committed = False
        self._sync: dict[str, Session] = {}
        self._async: dict[str, AsyncSession] = {}
        self._gates: list[SerialGate] = []
        self._gates_lock = threading.Lock()
        self._released = False
        self._holder = GateHolder()
        self._counted = False
        self._ended = False
        #: WAL positions (database name to LSN) this unit's reads must see: a client's token.
        self.positions: Mapping[str, int] = positions or {}
        #: WAL positions after this unit's commits, for databases with replicas it wrote to.
        self.commit_positions: dict[str, int] = {}
        self._primary = False
        self._routed: dict[str, tuple[Replica, int]] = {}

    def retried(self, reason: RetryReason) -> None:
        """Note that this unit's work runs again, in a new unit, after this one failed.

        The retry loops (the middleware's, :meth:`Lifecycle.transaction`'s) call it
        once per retry: ``"conflict"`` after a serialization failure or deadlock,
        ``"replica"`` when a failed replica read runs again on the primary. It does
        nothing here; a traced unit (``DATABASE_TELEMETRY``) counts it.
        """

    # -- replicas ------------------------------------------------------------------

    def use_primary(self) -> None:
        """Read (and write) on the primary, even if this unit is hinted read-only.

        Call it before the unit's first query; a session that already reads from a
        replica cannot move.
        """
        for session in (*self._sync.values(), *(s.sync_session for s in self._async.values())):
            if session.routed:
                raise LifecycleStateError(
                    "use_primary() was called after this unit of work had already read "
                    "from a replica; call it before the first query (e.g. first thing "
                    "in the handler)."
                )
        self._primary = True

    @property
    def replica_failed(self) -> bool:
        """Whether a replica this unit read from lost a connection since (retry on the primary)."""
        return any(replica.failures != seen for replica, seen in self._routed.values())

    def _route_sessions(self, database: Database, session: _EndableSession, kind: str) -> None:
        """Route a read-only unit's session to a replica; track a primary session's writes."""
        if not database.routes_reads:
            return
        if self.writes or self._primary:
            self._track(database, session)
            return
        session.route_reads(
            lambda: self._route(database, session, kind),
            lambda exc: self._connect_failed(database, exc),
        )

    def _connect_failed(self, database: Database, exc: BaseException) -> None:
        routed = self._routed.get(database.name)
        if routed is not None:
            routed[0].connection_failed(exc)

    def _track(self, database: Database, session: _EndableSession) -> None:
        def record(connection: Connection) -> None:
            try:
                text = wal_position(connection, PRIMARY_POSITION_QUERY)
            except Exception:
                logger.warning("reading the WAL position after a commit failed", exc_info=True)
                return
            if text is not None:
                position = parse_lsn(text)
                old = self.commit_positions.get(database.name, 0)
                self.commit_positions[database.name] = max(old, position)

        session.track_commit_position(record)

    def _route(self, database: Database, session: _EndableSession, kind: str) -> Engine | None:
        replicas = database.replicas
        if self._primary or replicas is None:
            self._track(database, session)
            return None
        position = self.positions.get(database.name)
        if kind == "async":
            if position is not None and not in_greenlet():
                return None  # cannot wait here; the primary has every write

            def fetch(replica: Replica) -> int | None:
                return replica.replay_position_blocking("async")

            def sleep(seconds: float) -> None:
                await_(anyio.sleep(seconds))
        else:

            def fetch(replica: Replica) -> int | None:
                return replica.replay_position_blocking("sync")

            def sleep(seconds: float) -> None:
                time.sleep(seconds)

        replica = replicas.choose(position, fetch, sleep)
        if replica is None:
            return None
        self._routed[database.name] = (replica, replica.failures)
        return replica.engine(kind)

    @property
    def opened(self) -> bool:
        """Whether any session was opened (a unit that opened none has nothing to end)."""
        return bool(self._sync or self._async)

    @property
    def holds_connections(self) -> bool:
        """Whether one of the unit's sessions holds a connection now (its transaction began)."""
        return any(interrupts.running_connections(session) for session in self._sessions())

    @property
    def database_names(self) -> tuple[str, ...]:
        """The databases this unit opened a session on, in the order it opened them."""
        return (*self._async, *(name for name in self._sync if name not in self._async))

    @property
    def ended(self) -> bool:
        """Whether :meth:`finish` has run."""
        return self._ended

    @property
    def committed(self) -> bool:
        """Whether :meth:`finish` committed (every database)."""
        return self._committed

    def configure(
        self,
        *,
        isolation_level: str | None = None,
        deadline: float | None = None,
        retries: Retries = None,
    ) -> None:
        """Set the options given (``None`` keeps the current one), before the first statement.

        How a web route opts in: its integration's ``transaction(...)`` calls this
        on the request's unit before the handler's code runs.
        """
        sessions = self._sessions()
        if any(s.in_transaction() for s in sessions) and (isolation_level or deadline):
            raise LifecycleStateError(
                "The isolation level and deadline of a unit of work apply when its "
                "transaction begins, and this unit already ran a statement: set them "
                "first (for a route: put its transaction(...) opt-in before the "
                "session it uses)."
            )
        if isolation_level is not None:
            self.isolation_level = isolation_level
        if deadline is not None:
            self.deadline = deadline
        if retries is not None:
            self.retry_policy = RetryPolicy.of(retries)
        for session in sessions:
            self._tune(session, self._databases(session._portside_database))

    def _sessions(self) -> list[_EndableSession]:
        return [s.sync_session for s in self._async.values()] + list(self._sync.values())

    def _tune(self, session: _EndableSession, database: Database) -> None:
        """Own ``session`` and give it the unit's isolation level and deadline."""
        session._portside_unit = self
        session._portside_database = database.name
        deadline = self.deadline if self.deadline is not None else database.settings.deadline
        session._portside_deadline = None if deadline is None else self._started + deadline
        if self.isolation_level is not None and not isinstance(session.bind, Connection):
            # Not on the test kit's connection: its outer transaction's level rules.
            bind = session.bind
            if bind is not None and bind.get_execution_options().get("isolation_level") != (
                self.isolation_level
            ):
                session.bind = bind.execution_options(isolation_level=self.isolation_level)

    # -- after-commit and after-rollback callbacks ------------------------------------

    def on_commit(self, callback: hooks.Callback) -> None:
        """Run ``callback`` (sync or async, no arguments) once this unit has committed.

        Registered inside a SAVEPOINT of one of the unit's sessions, use
        :func:`portside.on_commit` with that session instead, so that a rollback of
        the SAVEPOINT drops it. See :mod:`portside.hooks`.
        """
        self._register("commit", callback, None)

    def on_rollback(self, callback: hooks.Callback) -> None:
        """Run ``callback`` (sync or async, no arguments) if this unit rolls back."""
        self._register("rollback", callback, None)

    def _register(
        self, outcome: str, callback: hooks.Callback, savepoint: SessionTransaction | None
    ) -> None:
        if self._ended:
            raise LifecycleStateError(
                f"on_{outcome}() was called after the unit of work ended; register "
                "callbacks while its work runs."
            )
        if self._hooks is None:
            self._hooks = hooks.Hooks()
        self._hooks.add(outcome, callback, savepoint)

    async def run_hooks(self) -> None:
        """Run the callbacks of the unit's outcome (once it ended), each at most once.

        :meth:`finish` does this itself unless told ``run_hooks=False``. Shutdown
        waits for them like for a unit in flight.
        """
        if self._hooks is None or not self._ended:
            return
        callbacks = self._hooks.take(committed=self._committed)
        if callbacks:
            self._in_flight.hold()
            try:
                await hooks.run(callbacks, committed=self._committed)
            finally:
                self._in_flight.leave()

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
            self._route_sessions(database, session.sync_session, "async")
            self._tune(session.sync_session, database)
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
            self._route_sessions(database, session, "sync")
            self._tune(session, database)
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
            self._route_sessions(database, session, "sync")
            self._tune(session, database)
            if gates:
                session.before_first_statement(lambda: self._pass_blocking(gates), awaits=False)
            self._sync[database.name] = session
        return session

    async def finish(self, *, commit: bool, run_hooks: bool = True) -> None:
        """End the unit once: commit (or roll back) every session, then close them.

        If a commit fails, every session not yet committed is rolled back and the
        commit's exception is raised after cleanup; if an earlier database had
        already committed, it is raised as the cause of a :class:`PartialCommitError`
        saying which did and which did not (there is no two-phase commit). Then the
        callbacks of the outcome run, unless ``run_hooks=False`` (then call
        :meth:`run_hooks` later). Calling it again does nothing.
        """
        if self._ended:
            return
        self._ended = True
        committed = False
        done: list[str] = []
        try:
            if commit:
                # Inline, not a helper coroutine: every await of a request's hot path
                # resumes each frame above it.
                for name, async_session in self._async.items():
                    try:
                        await async_session.commit()
                    except Exception as exc:
                        if (partial := _partial(done, name, exc)) is None:
                            raise
                        raise partial from exc
                    done.append(name)
                for name, sync_session in self._sync.items():
                    try:
                        await anyio.to_thread.run_sync(sync_session.commit)
                    except Exception as exc:
                        if (partial := _partial(done, name, exc)) is None:
                            raise
                        raise partial from exc
                    done.append(name)
                committed = True
        finally:
            self._committed = committed
            try:
                if committed:
                    await self._close_committed()
                else:
                    with anyio.CancelScope(shield=True):
                        await self._close_all()
                if any(s.sync_session.pool_may_have_waiters for s in self._async.values()):
                    # Let a unit waiting for a connection we just returned run before
                    # this task goes on: a task that ends units in a loop (a job
                    # worker, a benchmark's client) would otherwise take it back from
                    # the pool first, every time, and its waiters would wait until the
                    # loop ends. Async sessions mean asyncio: the cheapest yield. A
                    # pool with room to spare has nobody waiting: no yield (it costs
                    # a turn of the event loop, a few percent of a short request).
                    await asyncio.sleep(0)
            finally:
                if run_hooks and self._hooks is not None:
                    await self.run_hooks()

    async def _close_committed(self) -> None:
        """Close sessions whose commit succeeded, returning their connections to the pool.

        The common path, so it skips the shielded, bounded machinery ``_close_all``
        needs for sessions that may still hold a transaction. With no transaction
        left, closing does no I/O, so it runs directly, even for async sessions;
        except returning an async connection the session kept (see
        :meth:`portside.sessions._EndableSession.get_bind`), which may close it (an
        overflow connection), and asyncpg's close awaits, in SQLAlchemy's greenlet.
        """
        try:
            for async_session in self._async.values():
                async_session.mark_ended()
                if async_session.sync_session.keeps_connections:
                    await async_session.close()
                else:
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
            self._committed = commit
        finally:
            try:
                for sync_session in self._sync.values():
                    sync_session.mark_ended()
                    _close_sync(sync_session, self._cleanup_timeout)
            finally:
                self._release()
                if self._hooks is not None:
                    callbacks = self._hooks.take(committed=self._committed)
                    hooks.run_blocking(callbacks, committed=self._committed)

    async def interrupt(self) -> None:
        """Stop, on the database server, the statements this unit's sessions run now.

        For work nobody waits for any more (a client that disconnected, see
        :mod:`portside.disconnects`): the code awaiting a statement gets the
        driver's "cancelled" error soon after (see :mod:`portside.interrupts`); the
        unit is still ended by whoever runs it. Takes at most the cleanup timeout;
        an ended unit has nothing to stop.
        """
        if self._ended:
            return
        connections = [
            connection
            for session in self._sessions()
            for connection in interrupts.running_connections(session)
        ]
        with anyio.move_on_after(self._cleanup_timeout):
            for connection in connections:
                await interrupts.interrupt(connection, self._cleanup_timeout)

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
