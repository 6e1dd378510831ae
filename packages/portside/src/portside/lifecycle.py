"""The lifecycle manager: engines built at startup, drained and disposed at shutdown.

:class:`Lifecycle` is the only object an integration holds. It is single-use: an
app's lifespan makes a new one on every startup, so an app started, stopped and
started again (as test clients do) gets fresh engines each time.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from types import TracebackType
from typing import Any, Self, TypeVar, cast

import anyio
import anyio.abc
import anyio.from_thread

from portside.binding import ConnectionBinding, current_binding
from portside.database import Database
from portside.errors import (
    ConfigurationError,
    LifecycleStateError,
    ShutdownError,
    ShuttingDownError,
)
from portside.event_loop import on_event_loop_thread
from portside.health import DatabaseStatus
from portside.in_flight import InFlight
from portside.retries import Retries, RetryPolicy
from portside.sessions import AsyncSession, Session
from portside.settings import DatabaseSettings
from portside.unit_of_work import UnitOfWork

__all__ = ["Databases", "Lifecycle"]

logger = logging.getLogger("portside")

T = TypeVar("T")

#: What a lifecycle is built from: one database's settings (named ``"default"``), a
#: mapping of names to settings (the first is the default), or ``None`` to read one
#: database's settings from the environment.
Databases = DatabaseSettings | Mapping[str, DatabaseSettings] | None


class _State(enum.Enum):
    NEW = "not started"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "shutting down"
    STOPPED = "shut down"


class Lifecycle:
    """Owns the engines of one or more named databases for one running app.

    ``async with Lifecycle(databases) as lifecycle:`` builds every database's
    engines, pings each with bounded retries, and raises
    :class:`~portside.StartupError` (after disposing what it built) if one does not
    answer. On exit it refuses new units of work, waits up to the shutdown timeout
    for running ones, then disposes every engine, reporting every failure in one
    :class:`~portside.ShutdownError`. Sync code without an event loop uses
    :meth:`blocking` instead.
    """

    def __init__(self, databases: Databases = None) -> None:
        if databases is None:
            databases = DatabaseSettings()
        if isinstance(databases, DatabaseSettings):
            databases = {"default": databases}
        if not databases:
            raise ConfigurationError("Lifecycle needs at least one database.")
        self._databases = {name: Database(name, settings) for name, settings in databases.items()}
        self._default = next(iter(self._databases))
        self._state = _State.NEW
        self._in_flight = InFlight(self._state_error)
        self._binding: ConnectionBinding | None = None
        self._monitor: anyio.abc.TaskGroup | None = None
        #: Seconds a session's cleanup may take (the largest configured).
        self.cleanup_timeout = max(s.cleanup_timeout for s in databases.values())
        self._unit_class = UnitOfWork
        if any(s.telemetry for s in databases.values()):
            # Imported only here: without telemetry, no OpenTelemetry import at all.
            from portside.telemetry import TracedUnitOfWork  # noqa: PLC0415

            self._unit_class = TracedUnitOfWork

    @classmethod
    @contextmanager
    def blocking(cls, databases: Databases = None) -> Iterator[Self]:
        """Run a lifecycle for sync code with no event loop: a script, a CLI, a migration.

        ``with Lifecycle.blocking(settings) as lifecycle:`` starts an event loop in a
        background thread for startup and shutdown; the block uses sync sessions
        (``with lifecycle.session() as session:``) directly.
        """
        if on_event_loop_thread():
            raise LifecycleStateError(
                "Lifecycle.blocking() blocks, so it cannot run on an event loop's thread; "
                "use `async with Lifecycle(...)` there."
            )
        with (
            anyio.from_thread.start_blocking_portal() as portal,
            portal.wrap_async_context_manager(cls(databases)) as lifecycle,
        ):
            yield cast(Self, lifecycle)

    def __repr__(self) -> str:
        names = ", ".join(f"{name}={db.masked_url}" for name, db in self._databases.items())
        return f"<Lifecycle {self._state.value}: {names}>"

    @property
    def names(self) -> tuple[str, ...]:
        """The database names, default first."""
        return tuple(self._databases)

    @property
    def running(self) -> bool:
        """Whether startup finished and shutdown has not begun."""
        return self._state is _State.RUNNING

    @property
    def in_flight(self) -> int:
        """Units of work that opened a session and have not finished yet."""
        return self._in_flight.count

    @property
    def binding(self) -> ConnectionBinding | None:
        """The test kit's binding this lifecycle joined at startup, if any."""
        return self._binding

    def database(self, name: str | None = None) -> Database:
        """The running database ``name`` (default: the first); raises if unusable."""
        if self._state is not _State.RUNNING:
            raise self._state_error()
        key = self._default if name is None else name
        try:
            return self._databases[key]
        except KeyError:
            known = ", ".join(repr(n) for n in self._databases)
            raise ConfigurationError(
                f"No database named {key!r}; this lifecycle has {known}."
            ) from None

    def _state_error(self) -> LifecycleStateError:
        if self._state in (_State.NEW, _State.STARTING):
            return LifecycleStateError(
                "The database lifecycle has not started yet. Enter it first "
                "(`async with lifecycle:`), or check that the app's lifespan runs: "
                "test clients must run the lifespan (e.g. `with TestClient(app):`)."
            )
        return ShuttingDownError(
            f"The database lifecycle is {self._state.value}: no new units of work are "
            "handed out. Work that runs after shutdown needs a new Lifecycle."
        )

    # -- startup and shutdown --------------------------------------------------------

    async def __aenter__(self) -> Self:
        await self.startup()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.shutdown()

    async def startup(self) -> None:
        """Build and check every database; raise :class:`StartupError` if one fails."""
        if self._state is not _State.NEW:
            raise LifecycleStateError(
                f"This lifecycle was already started (it is {self._state.value}); "
                "a Lifecycle is single-use, create a new one."
            )
        self._state = _State.STARTING
        binding = current_binding()
        try:
            for database in self._databases.values():
                await database.start(binding)
        except BaseException:
            with anyio.CancelScope(shield=True):
                for database in self._databases.values():
                    for error in await database.dispose():
                        logger.error("disposal failed: %s", error)  # noqa: TRY400 - one line is enough
            self._state = _State.STOPPED
            raise
        self._binding = binding
        await self._start_monitor()
        self._state = _State.RUNNING
        self._in_flight.open()
        if binding is not None:
            binding.lifecycle_started(self)

    @property
    def has_replicas(self) -> bool:
        """Whether some database routes reads to replicas (the middleware reads tokens then)."""
        return self._monitor is not None

    async def _start_monitor(self) -> None:
        """Check the replicas in the background, in a task group this lifecycle owns."""
        sets = [db.replicas for db in self._databases.values() if db.replicas is not None]
        if not sets:
            return
        self._monitor = anyio.create_task_group()
        await self._monitor.__aenter__()
        for replica_set in sets:
            self._monitor.start_soon(replica_set.monitor)

    async def _stop_monitor(self) -> None:
        monitor, self._monitor = self._monitor, None
        if monitor is not None:
            monitor.cancel_scope.cancel()
            await monitor.__aexit__(None, None, None)

    async def shutdown(self) -> None:
        """Stop handing out units of work, drain, and dispose every engine.

        Calling it again, or on a lifecycle whose startup failed, does nothing.
        """
        if self._state in (_State.STOPPING, _State.STOPPED):
            return
        if self._state is not _State.RUNNING:
            raise LifecycleStateError("The lifecycle cannot shut down before it started.")
        self._state = _State.STOPPING
        self._in_flight.close()
        await self._stop_monitor()  # not shielded: it must exit the scope it entered
        with anyio.CancelScope(shield=True):
            timeout = max(db.settings.shutdown_timeout for db in self._databases.values())
            if remaining := await self._in_flight.wait_until_empty(timeout):
                logger.warning(
                    "%d unit(s) of work still running after %gs (DATABASE_SHUTDOWN_TIMEOUT); "
                    "disposing engines anyway",
                    remaining,
                    timeout,
                )
            databases = list(self._databases.values())
            errors = await self._binding.lifecycle_stopping(databases) if self._binding else []
            for database in self._databases.values():
                errors += await database.dispose()
        self._state = _State.STOPPED
        if errors:
            detail = "; ".join(errors)
            logger.error("shutdown failed: %s", detail)
            raise ShutdownError(f"Disposing databases failed: {detail}")
        logger.info("all databases disposed")

    # -- units of work -------------------------------------------------------------

    def unit_of_work(
        self,
        *,
        writes: bool = True,
        request: Mapping[str, Any] | None = None,
        positions: Mapping[str, int] | None = None,
        isolation_level: str | None = None,
        deadline: float | None = None,
        retries: Retries = None,
    ) -> UnitOfWork:
        """A new unit of work (see :class:`~portside.UnitOfWork` for the options).

        Making one costs nothing and touches no pool; the lifecycle's state is
        checked when the unit opens its first session. ``request``: the ASGI scope
        of the request it serves, whose route telemetry reports. ``positions``
        (database name to WAL position, from a consistency token) keeps a read-only
        unit off replicas that have not replayed that far. ``retries`` is only
        recorded: a unit cannot rerun the code that used it, :meth:`run` can.
        """
        return self._unit_class(
            self.database,
            self._in_flight,
            writes=writes,
            cleanup_timeout=self.cleanup_timeout,
            request=request,
            positions=positions,
            isolation_level=isolation_level,
            deadline=deadline,
            retries=retries,
        )

    async def run(
        self,
        work: Callable[[UnitOfWork], Awaitable[T]],
        *,
        retries: Retries = None,
        writes: bool = True,
        isolation_level: str | None = None,
        deadline: float | None = None,
    ) -> T:
        """Run ``await work(unit)`` in a new unit of work, committed if it returns.

        With ``retries`` (a :class:`~portside.RetryPolicy` or a number of retries),
        a unit that failed with a serialization failure or a deadlock (at any
        statement or at its commit) is rolled back and ``work`` runs again in a new
        unit, after a jittered, growing pause; ``work`` must therefore be safe to
        run again. The last failure is raised when attempts run out.
        """
        policy = RetryPolicy.of(retries)
        attempt = 1
        while True:
            unit = self.unit_of_work(
                writes=writes, isolation_level=isolation_level, deadline=deadline
            )
            try:
                async with unit:
                    return await work(unit)
            except Exception as exc:
                if policy is None or not policy.retries(exc, attempt):
                    raise
                delay = policy.delay(attempt)
                unit.retried("conflict")
            logger.info("retrying a unit of work that lost a race (attempt %d)", attempt + 1)
            await anyio.sleep(delay)
            attempt += 1

    @asynccontextmanager
    async def async_session(
        self,
        name: str | None = None,
        *,
        writes: bool = True,
        isolation_level: str | None = None,
        deadline: float | None = None,
    ) -> AsyncIterator[AsyncSession]:
        """A unit of work with one async session: commit on clean exit, else roll back."""
        unit = self.unit_of_work(writes=writes, isolation_level=isolation_level, deadline=deadline)
        async with unit:
            yield await unit.async_session(name)

    @contextmanager
    def session(
        self,
        name: str | None = None,
        *,
        writes: bool = True,
        isolation_level: str | None = None,
        deadline: float | None = None,
    ) -> Iterator[Session]:
        """A unit of work with one sync session, for code in a worker thread.

        Commits on clean exit and rolls back on any exception. It blocks, so it
        refuses to run on the event loop's thread.
        """
        unit = self.unit_of_work(writes=writes, isolation_level=isolation_level, deadline=deadline)
        try:
            yield unit.session_blocking(name)
        except BaseException:  # opening failed too: release what the unit holds
            unit.finish_blocking(commit=False)
            raise
        unit.finish_blocking(commit=True)

    # -- health --------------------------------------------------------------------

    async def ping(self) -> dict[str, DatabaseStatus]:
        """Ping every database (bounded by its connect timeout) and read its pools.

        While the lifecycle is not running (starting, draining, shut down) every
        database reports down, so a readiness route answers 503 and load balancers
        stop sending traffic during a graceful shutdown.
        """
        if self._state is not _State.RUNNING:
            return {
                name: DatabaseStatus(name=name, up=False, latency=None, error=self._state.value)
                for name in self._databases
            }
        return {name: await db.ping() for name, db in self._databases.items()}
