"""The lifecycle manager: engines built at startup, drained and disposed at shutdown.

:class:`Lifecycle` is the only object an integration holds. It is single-use: an
app's lifespan makes a new one on every startup, so an app started, stopped and
started again (as test clients do) gets fresh engines each time.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Self

import anyio
import anyio.to_thread

from portside.adapters import AsyncAdapter, PoolStatus, SyncAdapter, build_adapters
from portside.errors import (
    ConfigurationError,
    LifecycleStateError,
    ShutdownError,
    ShuttingDownError,
    StartupError,
)
from portside.event_loop import running_asyncio
from portside.failures import is_transient_at_startup as _is_transient
from portside.health import DatabaseStatus
from portside.outer_transaction import OuterTransaction, active_outer_transaction
from portside.sessions import AsyncSession, Session
from portside.settings import DatabaseSettings
from portside.unit_of_work import UnitOfWork
from portside.urls import redact

logger = logging.getLogger("portside")

_DRAIN_POLL_INTERVAL = 0.01

_RETRY_FIRST_DELAY = 0.1
_RETRY_MAX_DELAY = 2.0


class _State(enum.Enum):
    NEW = "not started"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "shutting down"
    STOPPED = "shut down"


@dataclass(slots=True)
class _Database:
    """One named database: its settings and the adapters built for it."""

    name: str
    settings: DatabaseSettings
    sync: SyncAdapter | None = None
    async_: AsyncAdapter | None = None

    @property
    def masked_url(self) -> str:
        adapter = self.async_ or self.sync
        return adapter.masked_url if adapter else self.settings.masked_url

    def require_sync(self) -> SyncAdapter:
        if self.sync is None:
            raise ConfigurationError(
                f"Database {self.name!r} has no sync engine (engines={self.settings.engines!r});"
                " set DATABASE_ENGINES to 'both' or 'sync' to use sync sessions."
            )
        return self.sync

    def require_async(self) -> AsyncAdapter:
        if self.async_ is None:
            raise ConfigurationError(
                f"Database {self.name!r} has no async engine "
                f"(engines={self.settings.engines!r}); set DATABASE_ENGINES to 'both' "
                "or 'async' to use async sessions."
            )
        return self.async_

    def redact(self, text: str) -> str:
        return redact(text, self.settings.sync_url_object, self.settings.async_url_object)

    def pools(self) -> dict[str, PoolStatus]:
        pools: dict[str, PoolStatus] = {}
        if self.sync is not None:
            pools["sync"] = self.sync.pool_status()
        if self.async_ is not None:
            pools["async"] = self.async_.pool_status()
        return pools


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


class Lifecycle:
    """Owns the engines of one or more named databases for one running app.

    ``databases`` is one :class:`DatabaseSettings` (named ``"default"``), a mapping
    of names to settings (the first is the default), or ``None`` to read one
    database's settings from the environment.

    ``async with Lifecycle(...) as lifecycle:`` builds every adapter, pings each
    database with bounded retries, and raises :class:`StartupError` (after
    disposing what it built) if one does not answer. On exit it refuses new units
    of work, waits up to the shutdown timeout for running ones, then disposes every
    engine, reporting every failure in one :class:`ShutdownError`.
    """

    def __init__(
        self, databases: DatabaseSettings | Mapping[str, DatabaseSettings] | None = None
    ) -> None:
        if databases is None:
            databases = DatabaseSettings()
        if isinstance(databases, DatabaseSettings):
            databases = {"default": databases}
        if not databases:
            raise ConfigurationError("Lifecycle needs at least one database.")
        self._databases = {name: _Database(name, settings) for name, settings in databases.items()}
        self._default = next(iter(self._databases))
        self._state = _State.NEW
        self._in_flight = 0
        self._in_flight_lock = threading.Lock()
        #: The outer transaction (tests) this lifecycle's units of work join, if any.
        self.outer_transaction: OuterTransaction | None = None

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
    def cleanup_timeout(self) -> float:
        """Seconds a session's cleanup may take (the largest configured)."""
        return max(db.settings.cleanup_timeout for db in self._databases.values())

    @property
    def in_flight(self) -> int:
        """Units of work that opened a session and have not finished yet."""
        return self._in_flight

    def database(self, name: str | None = None) -> _Database:
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

    # -- startup -----------------------------------------------------------------

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
        try:
            for database in self._databases.values():
                await self._start(database)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await self._dispose_all(log_errors=True)
            self._state = _State.STOPPED
            raise
        self.outer_transaction = active_outer_transaction()
        if self.outer_transaction is not None:
            self.outer_transaction.lifecycles.append(self)
        self._state = _State.RUNNING

    async def _start(self, database: _Database) -> None:
        settings = database.settings
        if settings.engines != "sync" and not running_asyncio():
            raise StartupError(
                f"Database {database.name!r}: async SQLAlchemy runs on asyncio only. "
                "Under trio, set engines='sync' (DATABASE_ENGINES=sync)."
            )
        try:
            database.sync, database.async_ = build_adapters(settings)
        except ConfigurationError as exc:
            raise StartupError(
                f"Database {database.name!r} ({database.masked_url}): {exc}"
            ) from None
        started = time.perf_counter()
        await self._wait_until_ready(database)
        logger.info(
            "database %r ready: %s (%.1f ms)",
            database.name,
            database.masked_url,
            (time.perf_counter() - started) * 1000,
        )

    async def _wait_until_ready(self, database: _Database) -> None:
        timeout = database.settings.startup_timeout
        delay = _RETRY_FIRST_DELAY
        last_error: BaseException | None = None
        attempts = 0
        with anyio.move_on_after(timeout):
            while True:
                attempts += 1
                try:
                    await self._check(database)
                except StartupError as exc:
                    raise StartupError(
                        f"Database {database.name!r} ({database.masked_url}): {exc}"
                    ) from None
                except Exception as exc:
                    if not _is_transient(exc):
                        raise StartupError(
                            f"Database {database.name!r} ({database.masked_url}) failed its "
                            f"startup check: {database.redact(_one_line(exc))}"
                        ) from exc
                    last_error = exc
                    logger.warning(
                        "database %r (%s) not ready (attempt %d): %s",
                        database.name,
                        database.masked_url,
                        attempts,
                        database.redact(_one_line(exc)),
                    )
                    await anyio.sleep(delay)
                    delay = min(delay * 2, _RETRY_MAX_DELAY)
                else:
                    return
        cause = database.redact(_one_line(last_error)) if last_error else "no answer"
        message = (
            f"Database {database.name!r} ({database.masked_url}) did not become ready "
            f"within {timeout:g}s (DATABASE_STARTUP_TIMEOUT) after {attempts} attempt(s): "
            f"{cause}"
        )
        logger.error("%s", message)
        raise StartupError(message)

    async def _check(self, database: _Database) -> None:
        # Async first: asyncpg reports the SQLSTATE of a refused login, psycopg does not.
        if database.async_ is not None:
            await database.async_.ping()
            await database.async_.verify()
        if database.sync is not None:
            await anyio.to_thread.run_sync(database.sync.ping, abandon_on_cancel=True)
            await anyio.to_thread.run_sync(database.sync.verify, abandon_on_cancel=True)

    # -- units of work -------------------------------------------------------------

    def unit_of_work(self, *, writes: bool = True) -> UnitOfWork:
        """A new unit of work (see :class:`~portside.UnitOfWork`).

        Making one costs nothing and touches no pool; the lifecycle's state is
        checked when the unit opens its first session.
        """
        return UnitOfWork(self, writes=writes)

    @asynccontextmanager
    async def async_session(
        self, name: str | None = None, *, writes: bool = True
    ) -> AsyncIterator[AsyncSession]:
        """A unit of work with one async session: commit on clean exit, else roll back."""
        async with self.unit_of_work(writes=writes) as unit:
            yield await unit.async_session(name)

    @contextmanager
    def session(self, name: str | None = None, *, writes: bool = True) -> Iterator[Session]:
        """A unit of work with one sync session, for code in a worker thread.

        Commits on clean exit and rolls back on any exception. It blocks, so it
        refuses to run on the event loop's thread.
        """
        unit = self.unit_of_work(writes=writes)
        try:
            yield unit.session_blocking(name)
        except BaseException:  # opening failed too: release what the unit holds
            unit.finish_blocking(commit=False)
            raise
        unit.finish_blocking(commit=True)

    def _unit_started(self) -> None:
        with self._in_flight_lock:
            if self._state is not _State.RUNNING:
                raise self._state_error()
            self._in_flight += 1

    def _unit_finished(self) -> None:
        with self._in_flight_lock:
            self._in_flight -= 1

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
        return {name: await self._ping(db) for name, db in self._databases.items()}

    async def _ping(self, database: _Database) -> DatabaseStatus:
        timeout = database.settings.connect_timeout
        error: str | None = f"no answer within {timeout:g}s"
        latency: float | None = None
        with anyio.move_on_after(timeout):
            try:
                if database.async_ is not None:
                    latency = await database.async_.ping()
                elif database.sync is not None:
                    latency = await anyio.to_thread.run_sync(
                        database.sync.ping, abandon_on_cancel=True
                    )
                error = None
            except Exception as exc:
                error = database.redact(_one_line(exc))
        if error is not None:
            logger.warning(
                "database %r (%s) is down: %s", database.name, database.masked_url, error
            )
        return DatabaseStatus(
            name=database.name,
            up=error is None,
            latency=latency,
            error=error,
            pools=database.pools(),
        )

    # -- shutdown ------------------------------------------------------------------

    async def shutdown(self) -> None:
        """Stop handing out units of work, drain, and dispose every engine.

        Calling it again, or on a lifecycle whose startup failed, does nothing.
        """
        if self._state in (_State.STOPPING, _State.STOPPED):
            return
        if self._state is not _State.RUNNING:
            raise LifecycleStateError("The lifecycle cannot shut down before it started.")
        with self._in_flight_lock:
            self._state = _State.STOPPING
        with anyio.CancelScope(shield=True):
            await self._drain()
            errors = await self._release_outer_transaction()
            errors += await self._dispose_all(log_errors=False)
        self._state = _State.STOPPED
        if errors:
            detail = "; ".join(errors)
            logger.error("shutdown failed: %s", detail)
            raise ShutdownError(f"Disposing databases failed: {detail}")
        logger.info("all databases disposed")

    async def _drain(self) -> None:
        timeout = max(db.settings.shutdown_timeout for db in self._databases.values())
        with anyio.move_on_after(timeout):
            # Polled: units also end in worker threads, where no anyio.Event can be set.
            while self._in_flight:  # noqa: ASYNC110
                await anyio.sleep(_DRAIN_POLL_INTERVAL)
        if self._in_flight:
            logger.warning(
                "%d unit(s) of work still running after %gs (DATABASE_SHUTDOWN_TIMEOUT); "
                "disposing engines anyway",
                self._in_flight,
                timeout,
            )

    async def _release_outer_transaction(self) -> list[str]:
        """Roll back what this lifecycle's units of work did inside a test's transaction."""
        outer, errors = self.outer_transaction, list[str]()
        if outer is None:
            return errors
        for database in self._databases.values():
            try:
                if database.async_ is not None:
                    await outer.release_async(database.async_.engine)
                if database.sync is not None:
                    await outer.release_sync(database.sync.engine)
            except Exception as exc:
                errors.append(
                    f"database {database.name!r}: rolling back the outer transaction "
                    f"failed: {database.redact(_one_line(exc))}"
                )
        return errors

    async def _dispose_all(self, *, log_errors: bool) -> list[str]:
        """Dispose every built engine, collecting (not stopping at) failures."""
        errors: list[str] = []
        for database in self._databases.values():
            for kind, dispose in (
                ("sync", self._dispose_sync(database)),
                ("async", self._dispose_async(database)),
            ):
                try:
                    await dispose
                except Exception as exc:
                    message = (
                        f"database {database.name!r} ({database.masked_url}) {kind} engine: "
                        f"{database.redact(_one_line(exc))}"
                    )
                    errors.append(message)
                    if log_errors:
                        logger.error("disposal failed: %s", message)  # noqa: TRY400 - one line is enough
        return errors

    async def _dispose_sync(self, database: _Database) -> None:
        adapter, database.sync = database.sync, None
        if adapter is not None:
            await anyio.to_thread.run_sync(adapter.dispose)

    async def _dispose_async(self, database: _Database) -> None:
        adapter, database.async_ = database.async_, None
        if adapter is not None:
            await adapter.dispose()
