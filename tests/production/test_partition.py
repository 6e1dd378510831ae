"""Issue 12 item 7: a network partition never hangs a request or shutdown.

PostgreSQL is reached through :class:`PartitionProxy`, which can freeze: sockets
stay open, nothing is forwarded either way (packets dropped). Every wait on the
database is bounded by a setting:

- a statement running when the network freezes: ``statement_timeout``, then the
  connection's close, ``cleanup_timeout`` (asyncpg waits that long for its cancel
  request); the request gets 503;
- a rollback on a frozen connection: ``cleanup_timeout``;
- checkout of a pooled connection: its checkout check (``connect_timeout``), then
  one attempt at a new connection (``connect_timeout``); 503;
- shutdown: ``shutdown_timeout`` for units in flight, then ``cleanup_timeout`` to
  dispose the engines, whatever their connections do.

Each test prints what it measured (``pytest -s`` shows it).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import pytest
from fastapi import FastAPI, HTTPException
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError

import portside_fastapi
from portside import DatabaseSettings, Lifecycle
from portside_fastapi import AsyncSessionDep, SessionDep
from portside_testing import open_client
from tests.production.partition_proxy import PartitionProxy
from tests.production.postgres import backends, with_application_name

pytestmark = [pytest.mark.anyio, pytest.mark.postgresql]

STATEMENT = 1.5
CLEANUP = 1.0
CONNECT = 1.0
SHUTDOWN = 1.0
#: What a measured wait may exceed its bound by (scheduling on a shared machine).
MARGIN = 0.75


@pytest.fixture
def proxy(postgresql_url: str) -> Iterator[PartitionProxy]:
    with PartitionProxy(make_url(postgresql_url).port or 5432) as running:
        yield running


def settings(proxy: PartitionProxy, url: str, engines: str, **overrides: Any) -> DatabaseSettings:
    values: dict[str, Any] = {
        "url": proxy.url(url),
        "engines": engines,
        "statement_timeout": STATEMENT,
        "cleanup_timeout": CLEANUP,
        "connect_timeout": CONNECT,
        "shutdown_timeout": SHUTDOWN,
        "pool_timeout": 2.0,
        "startup_timeout": 10.0,
    }
    return DatabaseSettings(**(values | overrides))


def create_app(database: DatabaseSettings) -> FastAPI:
    app = FastAPI()
    portside_fastapi.install(app, database)

    @app.post("/async/sleep")
    async def async_sleep(session: AsyncSessionDep, seconds: float = 0.0) -> dict[str, str]:
        await session.exec(text("SELECT pg_sleep(:seconds)").bindparams(seconds=seconds))
        return {"slept": "yes"}

    @app.post("/sync/sleep")
    def sync_sleep(session: SessionDep, seconds: float = 0.0) -> dict[str, str]:
        session.exec(text("SELECT pg_sleep(:seconds)").bindparams(seconds=seconds))
        return {"slept": "yes"}

    @app.post("/async/then-refuse")
    async def async_then_refuse(session: AsyncSessionDep, seconds: float) -> None:
        """Run a statement, wait (the test freezes the network), answer 409: a rollback."""
        await session.exec(text("SELECT 1"))
        await anyio.sleep(seconds)
        raise HTTPException(409, "refused")

    @app.post("/sync/then-refuse")
    def sync_then_refuse(session: SessionDep, seconds: float) -> None:
        session.exec(text("SELECT 1"))
        time.sleep(seconds)
        raise HTTPException(409, "refused")

    return app


def other_tasks() -> set[asyncio.Task[Any]]:
    return {task for task in asyncio.all_tasks() if task is not asyncio.current_task()}


async def fill_pool(client: Any, kind: str, connections: int = 3) -> None:
    """Leave ``connections`` idle connections in the pool."""
    async with anyio.create_task_group() as group:
        for _ in range(connections):
            group.start_soon(client.post, f"/{kind}/sleep?seconds=0.2")


async def freeze_after(proxy: PartitionProxy, seconds: float) -> None:
    await anyio.sleep(seconds)
    proxy.freeze()


@asynccontextmanager
async def no_task_left_behind() -> AsyncIterator[None]:
    """Nothing portside starts outlives the block: no asyncpg cancel request still
    waiting, no graceful close left running (unawaited coroutines would fail the
    test as warnings)."""
    before = other_tasks()
    yield
    left = other_tasks() - before
    assert not left, left


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_a_statement_cut_off_by_a_partition_gets_503_in_time(
    kind: str,
    proxy: PartitionProxy,
    production_database: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    app = create_app(settings(proxy, production_database, kind))
    async with no_task_left_behind(), open_client(app, raise_app_exceptions=False) as client:
        await fill_pool(client, kind)
        started = time.monotonic()
        async with anyio.create_task_group() as group:
            group.start_soon(freeze_after, proxy, 0.3)
            with anyio.fail_after(STATEMENT + CLEANUP + 5):
                response = await client.post(f"/{kind}/sleep?seconds=1")
        statement_seconds = time.monotonic() - started
        assert response.status == 503, response.text

        # The pool's idle connections are frozen too: a new request checks one out,
        # it fails its checkout check, and a new connection cannot be opened.
        started = time.monotonic()
        with anyio.fail_after(2 * CONNECT + 5):
            response = await client.post(f"/{kind}/sleep")
        checkout_seconds = time.monotonic() - started
        assert response.status == 503, response.text
        stopping = time.monotonic()
    shutdown_seconds = time.monotonic() - stopping

    with capsys.disabled():
        print(
            f"\n[{kind}] statement cut off: 503 after {statement_seconds:.2f}s "
            f"(bound {STATEMENT}+{CLEANUP}); checkout: 503 after {checkout_seconds:.2f}s "
            f"(bound 2x{CONNECT}); shutdown {shutdown_seconds:.2f}s"
        )
    assert STATEMENT <= statement_seconds <= STATEMENT + CLEANUP + MARGIN
    assert checkout_seconds <= 2 * CONNECT + MARGIN
    assert shutdown_seconds <= SHUTDOWN + CLEANUP + MARGIN


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_the_statement_bound_on_a_healthy_server_cancels_the_statement(
    kind: str,
    proxy: PartitionProxy,
    production_database: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tag = f"portside-partition-{uuid.uuid4().hex[:8]}"
    database = settings(proxy, with_application_name(production_database, tag), kind)
    app = create_app(database)
    async with no_task_left_behind(), open_client(app, raise_app_exceptions=False) as client:
        started = time.monotonic()
        with anyio.fail_after(STATEMENT + CLEANUP + 5):
            response = await client.post(f"/{kind}/sleep?seconds=30")
        elapsed = time.monotonic() - started
        assert response.status == 503, response.text
        assert STATEMENT <= elapsed <= STATEMENT + CLEANUP + MARGIN
        # The client gave up, and the server does not go on sleeping for 30 s: the
        # statement was cancelled, its connection closed.
        with anyio.fail_after(5):
            while backends(production_database, tag):  # noqa: ASYNC110 - polling the server
                await anyio.sleep(0.05)
        # The next request gets a new connection.
        assert (await client.post(f"/{kind}/sleep")).status == 200
    with capsys.disabled():
        print(f"\n[{kind}] healthy server, statement over its bound: 503 after {elapsed:.2f}s")


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_a_rollback_on_a_frozen_connection_ends_in_time(
    kind: str,
    proxy: PartitionProxy,
    production_database: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # A long statement bound: only the cleanup bound may end the rollback.
    app = create_app(settings(proxy, production_database, kind, statement_timeout=30.0))
    async with no_task_left_behind(), open_client(app, raise_app_exceptions=False) as client:
        started = time.monotonic()
        async with anyio.create_task_group() as group:
            group.start_soon(freeze_after, proxy, 0.3)
            with anyio.fail_after(0.6 + CLEANUP + 5):
                response = await client.post(f"/{kind}/then-refuse?seconds=0.6")
        elapsed = time.monotonic() - started - 0.6  # after the handler's own wait
        assert response.status == 409
        status = client.lifecycle.database().pool_status()[kind]
        assert status.checked_out == 0  # invalidated, not leaked
        stopping = time.monotonic()
    shutdown_seconds = time.monotonic() - stopping

    with capsys.disabled():
        print(
            f"\n[{kind}] rollback on a frozen connection: {elapsed:.2f}s (bound {CLEANUP}); "
            f"shutdown {shutdown_seconds:.2f}s"
        )
    assert elapsed <= CLEANUP + MARGIN
    assert shutdown_seconds <= SHUTDOWN + CLEANUP + MARGIN


@pytest.mark.parametrize("engines", ["async", "sync", "both"])
async def test_shutdown_with_a_frozen_pool_and_a_stuck_unit_ends_in_time(
    engines: str,
    proxy: PartitionProxy,
    production_database: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    database = settings(proxy, production_database, engines, statement_timeout=3.0)
    async with no_task_left_behind():
        lifecycle = Lifecycle(database)
        await lifecycle.startup()
        kinds = lifecycle.database().kinds

        async def work(seconds: float) -> None:
            if "async" in kinds:
                async with lifecycle.async_session() as session:
                    await session.exec(text("SELECT pg_sleep(:s)").bindparams(s=seconds))
            if "sync" in kinds:

                def blocking() -> None:
                    with lifecycle.session() as session:
                        session.exec(text("SELECT pg_sleep(:s)").bindparams(s=seconds))

                await anyio.to_thread.run_sync(blocking)

        async with anyio.create_task_group() as group:
            for _ in range(3):
                group.start_soon(work, 0.2)
        idle = {kind: status.size for kind, status in lifecycle.database().pool_status().items()}
        assert all(size >= 1 for size in idle.values()), idle

        stuck: list[OperationalError] = []

        async def stuck_unit() -> None:
            try:
                async with lifecycle.async_session() as session:
                    await session.exec(text("SELECT pg_sleep(10)"))
            except OperationalError as exc:
                stuck.append(exc)

        def stuck_sync_unit() -> None:
            try:
                with lifecycle.session() as session:
                    session.exec(text("SELECT pg_sleep(10)"))
            except OperationalError as exc:
                stuck.append(exc)

        async with anyio.create_task_group() as group:
            if "async" in kinds:
                group.start_soon(stuck_unit)
            if "sync" in kinds:
                group.start_soon(anyio.to_thread.run_sync, stuck_sync_unit)
            await anyio.sleep(0.3)  # the stuck unit's statement is on its way
            proxy.freeze()
            started = time.monotonic()
            with anyio.fail_after(SHUTDOWN + CLEANUP + 10):
                await lifecycle.shutdown()
            shutdown_seconds = time.monotonic() - started

    with capsys.disabled():
        print(
            f"\n[{engines}] shutdown with {idle} idle connection(s) frozen"
            f" and {len(kinds)} unit(s) stuck in a statement: "
            f"{shutdown_seconds:.2f}s (bound {SHUTDOWN}+{CLEANUP})"
        )
    assert shutdown_seconds <= SHUTDOWN + CLEANUP + 1.0
    # Each stuck unit was ended by its own statement bound, with a lost connection.
    assert len(stuck) == len(kinds)
    assert all(exc.connection_invalidated for exc in stuck)


async def test_a_new_lifecycle_works_after_thaw(
    proxy: PartitionProxy,
    production_database: str,
) -> None:
    database = settings(proxy, production_database, "both")
    async with no_task_left_behind():
        async with Lifecycle(database) as lifecycle:
            async with lifecycle.async_session() as session:
                await session.exec(text("SELECT 1"))
            proxy.freeze()
            with pytest.raises(OperationalError):
                async with lifecycle.async_session() as session:
                    await session.exec(text("SELECT 1"))
        proxy.thaw()

        async with Lifecycle(database) as lifecycle:
            async with lifecycle.async_session() as session:
                assert (await session.exec(text("SELECT 41 + 1"))).scalar_one() == 42

            def blocking() -> int:
                with lifecycle.session() as session:
                    return int(session.exec(text("SELECT 42")).scalar_one())

            assert await anyio.to_thread.run_sync(blocking) == 42
            assert all(status.up for status in (await lifecycle.ping()).values())


async def test_startup_against_a_frozen_network_fails_in_time(
    proxy: PartitionProxy, production_database: str, capsys: pytest.CaptureFixture[str]
) -> None:
    from portside import StartupError

    proxy.freeze()
    database = settings(proxy, production_database, "both", startup_timeout=2.0)
    started = time.monotonic()
    with anyio.fail_after(10), pytest.raises(StartupError, match="did not become ready"):
        async with no_task_left_behind(), Lifecycle(database):
            pass
    elapsed = time.monotonic() - started
    with capsys.disabled():
        print(f"\nstartup against a frozen network: StartupError after {elapsed:.2f}s")
    assert elapsed <= 2.0 + CONNECT + CLEANUP + MARGIN
