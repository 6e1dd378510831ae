"""Issue 11, "one shape": a backend registered from outside, and ``Lifecycle.blocking``.

The first tests define a whole backend here, in the test module: a SQLAlchemy dialect
of their own (SQLite underneath, under the name ``portsidetest``), adapters that
implement the ports, and a :class:`portside.Backend` registered with
:func:`portside.register_backend`. A lifecycle on a ``portsidetest://`` URL must then
run entirely through them: settings, URL derivation, startup checks, units of work,
ping and pool counters.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
from sqlalchemy import Connection, func, insert, select
from sqlalchemy.dialects import registry
from sqlalchemy.dialects.sqlite.aiosqlite import SQLiteDialect_aiosqlite
from sqlalchemy.dialects.sqlite.pysqlite import SQLiteDialect_pysqlite
from sqlalchemy.engine import URL
from sqlalchemy.ext.asyncio import AsyncConnection

import portside
import portside.backends
from portside import (
    AsyncSession,
    AsyncSessionPort,
    ConfigurationError,
    DatabaseSettings,
    Lifecycle,
    LifecycleStateError,
    Session,
    SessionPort,
    StartupError,
)
from portside.adapters.base import AsyncAdapter, SyncAdapter

from .conftest import metadata, notes

pytestmark = pytest.mark.anyio

BACKEND = "portsidetest"


# -- a backend of the test's own ---------------------------------------------------------


class PortsideTestDialect(SQLiteDialect_pysqlite):
    """SQLite through pysqlite, under a backend name portside has never heard of."""

    name = BACKEND
    supports_statement_cache = True


class PortsideTestAsyncDialect(SQLiteDialect_aiosqlite):
    """Its asyncio counterpart (``portsidetest+aiosqlite``)."""

    name = BACKEND
    supports_statement_cache = True


#: Every call the core made into the test backend's adapters, in order.
Calls = list[tuple[str, str]]


class RecordingSyncAdapter(SyncAdapter):
    """The sync port of the test backend; records what the core asks of it."""

    def __init__(self, settings: DatabaseSettings, url: URL, calls: Calls) -> None:
        self.calls = calls
        super().__init__(settings, url)

    def engine_options(self) -> dict[str, Any]:
        return super().engine_options() | self.pooling_options()

    def new_session(self, *, writes: bool, bind: Connection | None = None) -> Session:
        self.calls.append(("sync", f"new_session(writes={writes})"))
        return super().new_session(writes=writes, bind=bind)

    def ping(self) -> float:
        self.calls.append(("sync", "ping"))
        return super().ping()

    def verify(self) -> None:
        self.calls.append(("sync", "verify"))
        super().verify()

    def dispose(self) -> None:
        self.calls.append(("sync", "dispose"))
        super().dispose()


class RecordingAsyncAdapter(AsyncAdapter):
    """The async port of the test backend; records what the core asks of it."""

    def __init__(self, settings: DatabaseSettings, url: URL, calls: Calls) -> None:
        self.calls = calls
        super().__init__(settings, url)

    def engine_options(self) -> dict[str, Any]:
        return super().engine_options() | self.pooling_options()

    def new_session(self, *, writes: bool, bind: AsyncConnection | None = None) -> AsyncSession:
        self.calls.append(("async", f"new_session(writes={writes})"))
        return super().new_session(writes=writes, bind=bind)

    async def ping(self) -> float:
        self.calls.append(("async", "ping"))
        return await super().ping()

    async def verify(self) -> None:
        self.calls.append(("async", "verify"))
        await super().verify()

    async def dispose(self) -> None:
        self.calls.append(("async", "dispose"))
        await super().dispose()


@pytest.fixture
def test_backend() -> Iterator[Calls]:
    """Register the ``portsidetest`` dialects and backend; unregister them afterwards."""
    portside.backends.registered_backends()  # the built-ins register on first use
    saved = dict(portside.backends._registry)
    registry.register(BACKEND, __name__, PortsideTestDialect.__name__)
    registry.register(f"{BACKEND}.aiosqlite", __name__, PortsideTestAsyncDialect.__name__)
    calls: Calls = []

    def build(
        settings: DatabaseSettings, sync_url: URL | None, async_url: URL | None
    ) -> tuple[RecordingSyncAdapter | None, RecordingAsyncAdapter | None]:
        calls.append(("backend", f"build({sync_url}, {async_url})"))
        sync = RecordingSyncAdapter(settings, sync_url, calls) if sync_url else None
        async_ = RecordingAsyncAdapter(settings, async_url, calls) if async_url else None
        return sync, async_

    portside.register_backend(
        portside.Backend(BACKEND, build, BACKEND, f"{BACKEND}+aiosqlite", extra=None)
    )
    try:
        yield calls
    finally:
        portside.backends._registry.clear()
        portside.backends._registry.update(saved)
        for name in (BACKEND, f"{BACKEND}.aiosqlite"):
            if hasattr(registry, "deregister"):  # SQLAlchemy 2.1
                registry.deregister(name)
            else:  # 2.0 keeps the loaders in a plain dict
                registry.impls.pop(name, None)


def test_an_unregistered_backend_is_refused(tmp_path: Path) -> None:
    """Without the registration the same URL is a configuration error (control)."""
    with pytest.raises(ConfigurationError, match="unknown database scheme 'portsidetest'"):
        DatabaseSettings(url=f"{BACKEND}:///{tmp_path / 'custom.db'}")


async def test_a_registered_backend_runs_units_of_work(test_backend: Calls, tmp_path: Path) -> None:
    path = tmp_path / "custom.db"
    settings = DatabaseSettings(url=f"{BACKEND}:///{path}", pool_size=2, max_overflow=1)
    # The backend's drivers were used to derive the missing URL.
    assert settings.url == f"{BACKEND}:///{path}"
    assert settings.async_url == f"{BACKEND}+aiosqlite:///{path}"

    async with Lifecycle(settings) as lifecycle:
        database = lifecycle.database()
        assert database.kinds == ("sync", "async")
        sync_port, async_port = database.sync_port(), database.async_port()
        assert isinstance(sync_port, RecordingSyncAdapter)
        assert isinstance(async_port, RecordingAsyncAdapter)
        assert isinstance(sync_port, SessionPort)
        assert isinstance(async_port, AsyncSessionPort)
        assert database.engine.dialect.name == BACKEND
        assert database.async_engine.dialect.name == BACKEND
        # Startup built the adapters and checked both through the ports.
        assert test_backend[0][0] == "backend"
        assert {("sync", "ping"), ("sync", "verify"), ("async", "ping"), ("async", "verify")} <= (
            set(test_backend)
        )
        await database.create_all(metadata)

        test_backend.clear()
        async with lifecycle.async_session() as session:
            await session.exec(insert(notes).values(body="through the async port"))
        assert test_backend == [("async", "new_session(writes=True)")]

        def sync_side() -> list[str]:
            with lifecycle.session() as session:
                session.exec(insert(notes).values(body="through the sync port"))
            with lifecycle.session(writes=False) as session:
                return sorted(session.exec(select(notes.c.body)).scalars())

        test_backend.clear()
        bodies = await anyio.to_thread.run_sync(sync_side)
        assert bodies == ["through the async port", "through the sync port"]
        assert test_backend == [
            ("sync", "new_session(writes=True)"),
            ("sync", "new_session(writes=False)"),
        ]

        with pytest.raises(RuntimeError, match="undone"):
            async with lifecycle.async_session() as session:
                await session.exec(insert(notes).values(body="rolled back"))
                raise RuntimeError("undone")
        async with lifecycle.async_session(writes=False) as session:
            count = (await session.exec(select(func.count()).select_from(notes))).scalar_one()
        assert count == 2

        test_backend.clear()
        status = (await lifecycle.ping())["default"]
        assert status.up, status.error
        assert status.latency is not None
        assert test_backend == [("async", "ping")]
        pools = database.pool_status()
        assert set(pools) == {"sync", "async"}
        assert pools["sync"].size == 2
        assert pools["async"].size == 2
        assert pools["sync"].checked_out == 0
        assert pools["async"].checked_out == 0
        assert status.pools == pools
        assert lifecycle.in_flight == 0

        test_backend.clear()
    assert sorted(test_backend) == [("async", "dispose"), ("sync", "dispose")]


async def test_a_registered_backend_builds_only_what_is_asked_for(
    test_backend: Calls, tmp_path: Path
) -> None:
    settings = DatabaseSettings(url=f"{BACKEND}:///{tmp_path / 'sync.db'}", engines="sync")
    async with Lifecycle(settings) as lifecycle:
        database = lifecycle.database()
        assert database.kinds == ("sync",)
        assert test_backend[0] == ("backend", f"build({settings.url}, None)")
        with pytest.raises(ConfigurationError, match="no async engine"):
            async with lifecycle.async_session():
                pass


# -- Lifecycle.blocking: sync code with no event loop -----------------------------------


def write_and_read_back(lifecycle: Lifecycle) -> list[str]:
    """Create the notes table, write one row through a unit of work, read it back."""
    engine = lifecycle.database().engine
    metadata.drop_all(engine)
    metadata.create_all(engine)
    with lifecycle.session() as session:
        session.exec(insert(notes).values(body="written by a script"))
    with lifecycle.session(writes=False) as session:
        return list(session.exec(select(notes.c.body)).scalars())


def test_blocking_lifecycle_runs_a_script(tmp_path: Path) -> None:
    settings = DatabaseSettings(url=f"sqlite:///{tmp_path / 'script.db'}")
    with Lifecycle.blocking(settings) as lifecycle:
        assert isinstance(lifecycle, Lifecycle)
        assert lifecycle.running
        assert threading.current_thread() is threading.main_thread()
        assert write_and_read_back(lifecycle) == ["written by a script"]
        assert lifecycle.in_flight == 0
    assert not lifecycle.running
    # The data outlived the lifecycle: it was committed, not just flushed.
    with Lifecycle.blocking(settings) as again, again.session(writes=False) as session:
        assert list(session.exec(select(notes.c.body)).scalars()) == ["written by a script"]


async def test_blocking_lifecycle_refuses_an_event_loop_thread(tmp_path: Path) -> None:
    settings = DatabaseSettings(url=f"sqlite:///{tmp_path / 'loop.db'}")
    with (
        pytest.raises(LifecycleStateError, match="async with Lifecycle"),
        Lifecycle.blocking(settings),
    ):
        pytest.fail("the block must not run on the event loop's thread")


def test_blocking_lifecycle_on_postgresql(postgresql_url: str) -> None:
    settings = DatabaseSettings(url=postgresql_url, engines="auto")
    with Lifecycle.blocking(settings) as lifecycle:
        assert "sync" in lifecycle.database().kinds
        try:
            assert write_and_read_back(lifecycle) == ["written by a script"]
        finally:
            metadata.drop_all(lifecycle.database().engine)


# -- engines="auto" when the async driver is missing -------------------------------------


@pytest.fixture
def no_asyncpg(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``import asyncpg`` fail, as if the driver were not installed."""
    monkeypatch.setitem(sys.modules, "asyncpg", None)


@pytest.mark.usefixtures("no_asyncpg")
async def test_auto_starts_postgresql_without_its_async_driver(postgresql_url: str) -> None:
    settings = DatabaseSettings(url=postgresql_url, engines="auto")
    async with Lifecycle(settings) as lifecycle:
        database = lifecycle.database()
        assert database.kinds == ("sync",)
        assert await anyio.to_thread.run_sync(write_and_read_back, lifecycle) == [
            "written by a script"
        ]
        await anyio.to_thread.run_sync(metadata.drop_all, database.engine)

        with pytest.raises(ConfigurationError) as caught:
            async with lifecycle.async_session():
                pass
        message = str(caught.value)
        assert "'asyncpg'" in message
        assert "portside[postgresql]" in message
        with pytest.raises(ConfigurationError, match="'asyncpg'"):
            database.async_engine  # noqa: B018 - the property raises
        assert lifecycle.in_flight == 0
        assert (await lifecycle.ping())["default"].up


@pytest.mark.usefixtures("no_asyncpg")
async def test_explicit_async_engine_without_its_driver_fails_startup(
    postgresql_url: str,
) -> None:
    settings = DatabaseSettings(url=postgresql_url, engines="async")
    lifecycle = Lifecycle(settings)
    with pytest.raises(StartupError) as caught:
        async with lifecycle:
            pytest.fail("startup must fail")
    message = str(caught.value)
    assert "'asyncpg' is not installed" in message
    assert "portside[postgresql]" in message
    assert not lifecycle.running
