"""One named database of a running lifecycle: its engines, its health, its sessions.

``lifecycle.database(name)`` returns a :class:`Database`. Application code uses it
for what is not a unit of work: creating tables at startup
(``await database.create_all(SQLModel.metadata)``), handing ``database.engine`` to
Alembic or a reporting tool, reading ``database.masked_url`` or ``pool_status()``.
The unit of work uses it to open sessions, through the backend's ports.
"""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread

from portside.adapters import build_adapters
from portside.errors import ConfigurationError, StartupError
from portside.event_loop import running_asyncio
from portside.failures import is_transient_at_startup
from portside.health import DatabaseStatus
from portside.urls import redact

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from sqlalchemy import Engine, MetaData
    from sqlalchemy.ext.asyncio import AsyncEngine

    from portside.binding import ConnectionBinding
    from portside.pool_status import PoolStatus
    from portside.ports import AsyncSessionPort, SessionPort
    from portside.serial_gate import SerialGate
    from portside.sessions import AsyncSession, Session
    from portside.settings import DatabaseSettings

__all__ = ["Database"]

logger = logging.getLogger("portside")

_RETRY_FIRST_DELAY = 0.1
_RETRY_MAX_DELAY = 2.0


def one_line(exc: BaseException) -> str:
    """``Type: first line of the message``, for logs and errors (redact it first)."""
    text = str(exc).strip().splitlines()
    first = text[0] if text else ""
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


class Database:
    """One named database: its settings and, while running, its engines.

    Built by :class:`~portside.Lifecycle`; get it with ``lifecycle.database(name)``.
    """

    def __init__(self, name: str, settings: DatabaseSettings) -> None:
        #: The name it was given (``"default"`` for a single database).
        self.name = name
        #: Its settings (URLs inside are never shown unmasked).
        self.settings = settings
        self._sync: SessionPort | None = None
        self._async: AsyncSessionPort | None = None
        self._left_out: str | None = None
        self._binding: ConnectionBinding | None = None

    def __repr__(self) -> str:
        return f"<Database {self.name!r} {self.masked_url}>"

    # -- what applications use -----------------------------------------------------

    @property
    def masked_url(self) -> str:
        """The database's URL with any password replaced by ``***``."""
        port = self._async or self._sync
        return port.masked_url if port else self.settings.masked_url

    @property
    def engine(self) -> Engine:
        """The synchronous SQLAlchemy engine (raises if this database has none)."""
        return self.sync_port().engine

    @property
    def async_engine(self) -> AsyncEngine:
        """The asyncio SQLAlchemy engine (raises if this database has none)."""
        return self.async_port().engine

    @property
    def kinds(self) -> tuple[str, ...]:
        """The kinds of engine built: ``"sync"`` and/or ``"async"``."""
        return tuple(k for k, p in (("sync", self._sync), ("async", self._async)) if p)

    async def create_all(self, metadata: MetaData) -> None:
        """Create the tables of ``metadata`` that do not exist yet (e.g. at startup).

        Uses the async engine when there is one, else the sync engine in a worker
        thread. For real schema changes, run migrations (Alembic) before the app.
        """
        if self._async is not None:
            async with self._async.engine.begin() as connection:
                await connection.run_sync(metadata.create_all)
        else:
            await anyio.to_thread.run_sync(metadata.create_all, self.sync_port().engine)

    def pool_status(self) -> dict[str, PoolStatus]:
        """Pool counters per kind of engine (``"sync"`` / ``"async"``)."""
        pools: dict[str, PoolStatus] = {}
        if self._sync is not None:
            pools["sync"] = self._sync.pool_status()
        if self._async is not None:
            pools["async"] = self._async.pool_status()
        return pools

    async def ping(self) -> DatabaseStatus:
        """Ping the database (bounded by the connect timeout); never raises."""
        timeout = self.settings.connect_timeout
        error: str | None = f"no answer within {timeout:g}s"
        latency: float | None = None
        with anyio.move_on_after(timeout):
            try:
                if self._async is not None:
                    latency = await self._async.ping()
                elif self._sync is not None:
                    latency = await anyio.to_thread.run_sync(
                        self._sync.ping, abandon_on_cancel=True
                    )
                error = None
            except Exception as exc:
                error = self.redact(one_line(exc))
        if error is not None:
            logger.warning("database %r (%s) is down: %s", self.name, self.masked_url, error)
        return DatabaseStatus(
            name=self.name,
            up=error is None,
            latency=latency,
            error=error,
            pools=self.pool_status(),
        )

    def redact(self, text: str) -> str:
        """``text`` with every secret of this database's URLs masked."""
        return redact(text, self.settings.sync_url_object, self.settings.async_url_object)

    # -- what the unit of work uses ---------------------------------------------------

    def sync_port(self) -> SessionPort:
        """The sync engine's port; raises :class:`ConfigurationError` saying why there is none."""
        if self._sync is None:
            raise self._missing("sync", "a sync session or engine")
        return self._sync

    def async_port(self) -> AsyncSessionPort:
        """The async engine's port; raises :class:`ConfigurationError` saying why there is none."""
        if self._async is None:
            raise self._missing("async", "an async session or engine")
        return self._async

    def _missing(self, kind: str, what: str) -> ConfigurationError:
        why = self._left_out or f"engines={self.settings.engines!r}"
        return ConfigurationError(
            f"Database {self.name!r} has no {kind} engine ({why}), so it cannot give "
            f"{what}. Install its driver or set DATABASE_ENGINES to 'both' or {kind!r}."
        )

    def gates(self, port: SessionPort | AsyncSessionPort, *, writes: bool) -> list[SerialGate]:
        """The gates a unit of work passes before opening a session on ``port``."""
        gates = [port.gate_for(writes=writes)]
        if self._binding is not None:
            gates.append(self._binding.gate)
        return [gate for gate in gates if gate is not None]

    async def new_async_session(self, *, writes: bool) -> AsyncSession:
        """A new async session, on the binding's connection when a test kit set one."""
        port = self.async_port()
        bind = await self._binding.async_connection(port.engine) if self._binding else None
        return port.new_session(writes=writes, bind=bind)

    def new_session_blocking(self, *, writes: bool) -> Session:
        """A new sync session; may block for the binding's connection (worker thread)."""
        port = self.sync_port()
        bind = self._binding.sync_connection(port.engine) if self._binding else None
        return port.new_session(writes=writes, bind=bind)

    async def new_session(self, *, writes: bool) -> Session:
        """:meth:`new_session_blocking` from the event loop."""
        if self._binding is None:  # no I/O at all: no thread needed
            return self.sync_port().new_session(writes=writes)
        return await anyio.to_thread.run_sync(lambda: self.new_session_blocking(writes=writes))

    # -- startup and shutdown (the lifecycle's) ------------------------------------------

    async def start(self, binding: ConnectionBinding | None) -> None:
        """Build the engines and wait until the database answers (bounded, with retries)."""
        self._binding = binding
        try:
            self._sync, self._async, self._left_out = build_adapters(
                self.settings, asyncio_available=running_asyncio()
            )
        except ConfigurationError as exc:
            raise StartupError(f"Database {self.name!r} ({self.masked_url}): {exc}") from None
        if self._async is not None and not running_asyncio():
            raise StartupError(
                f"Database {self.name!r}: async SQLAlchemy runs on asyncio only. "
                "Under trio, set engines='sync' (DATABASE_ENGINES=sync)."
            )
        started = time.perf_counter()
        await self._wait_until_ready()
        logger.info(
            "database %r ready: %s (%.1f ms)",
            self.name,
            self.masked_url,
            (time.perf_counter() - started) * 1000,
        )

    async def _wait_until_ready(self) -> None:
        timeout = self.settings.startup_timeout
        delay = _RETRY_FIRST_DELAY
        last_error: BaseException | None = None
        attempts = 0
        with anyio.move_on_after(timeout):
            while True:
                attempts += 1
                try:
                    await self._check()
                except StartupError as exc:
                    raise StartupError(
                        f"Database {self.name!r} ({self.masked_url}): {exc}"
                    ) from None
                except Exception as exc:
                    if not is_transient_at_startup(exc):
                        raise StartupError(
                            f"Database {self.name!r} ({self.masked_url}) failed its "
                            f"startup check: {self.redact(one_line(exc))}"
                        ) from exc
                    last_error = exc
                    logger.warning(
                        "database %r (%s) not ready (attempt %d): %s",
                        self.name,
                        self.masked_url,
                        attempts,
                        self.redact(one_line(exc)),
                    )
                    await anyio.sleep(delay)
                    delay = min(delay * 2, _RETRY_MAX_DELAY)
                else:
                    return
        cause = self.redact(one_line(last_error)) if last_error else "no answer"
        message = (
            f"Database {self.name!r} ({self.masked_url}) did not become ready "
            f"within {timeout:g}s (DATABASE_STARTUP_TIMEOUT) after {attempts} attempt(s): "
            f"{cause}"
        )
        logger.error("%s", message)
        raise StartupError(message)

    async def _check(self) -> None:
        # Async first: asyncpg reports the SQLSTATE of a refused login, psycopg does not.
        if self._async is not None:
            await self._async.ping()
            await self._async.verify()
        if self._sync is not None:
            await anyio.to_thread.run_sync(self._sync.ping, abandon_on_cancel=True)
            await anyio.to_thread.run_sync(self._sync.verify, abandon_on_cancel=True)

    async def dispose(self) -> list[str]:
        """Dispose every engine, collecting (not stopping at) failures; one line each.

        Bounded by the cleanup timeout, the engines side by side: a server that stopped
        answering cannot hold up shutdown. What an async engine has not closed by
        then is terminated (no goodbye to the server); a sync engine's disposal is
        left to its worker thread (psycopg's close does not wait for the server).
        """
        errors: list[str] = []
        sync_port, self._sync = self._sync, None
        async_port, self._async = self._async, None
        limit = self.settings.cleanup_timeout

        async def bounded(kind: str, dispose: Callable[[], Awaitable[None]]) -> None:
            with anyio.move_on_after(limit) as scope:
                try:
                    await dispose()
                except Exception as exc:
                    errors.append(self._disposal_error(kind, exc))
            if scope.cancelled_caught:
                logger.warning(
                    "database %r (%s): its %s engine did not close its connections within "
                    "%gs (DATABASE_CLEANUP_TIMEOUT); %s",
                    self.name,
                    self.masked_url,
                    kind,
                    limit,
                    "the rest were dropped"
                    if kind == "async"
                    else "its worker thread goes on closing them",
                )

        async with anyio.create_task_group() as group:
            if sync_port is not None:
                sync_dispose = sync_port.dispose
                group.start_soon(
                    bounded,
                    "sync",
                    lambda: anyio.to_thread.run_sync(sync_dispose, abandon_on_cancel=True),
                )
            if async_port is not None:
                group.start_soon(bounded, "async", async_port.dispose)
        return errors

    def _disposal_error(self, kind: str, exc: Exception) -> str:
        detail = self.redact(one_line(exc))
        return f"database {self.name!r} ({self.masked_url}) {kind} engine: {detail}"
