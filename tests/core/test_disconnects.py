"""A client that disconnects mid-request: its statement stops on the server, its unit rolls back.

The middleware drives a plain ASGI app on every backend. Each slow statement would
run far longer than the bound the test waits (30 s on PostgreSQL, forever on
SQLite), so a request that ends within that bound had its statement stopped.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.to_thread
import asyncpg
import pytest
from sqlalchemy import func, insert, select, text
from sqlalchemy.exc import DBAPIError

from portside import DatabaseSettings, Lifecycle, UnitOfWork
from portside.asgi import LIFECYCLE_STATE_KEY, UnitOfWorkMiddleware, unit_of_work_from_scope
from portside_testing.asgi import AppRunner
from tests.core.conftest import SettingsFactory, create_tables, notes

pytestmark = pytest.mark.anyio

MARKER = "portside_disconnect_test"
#: How long a request may take to end after its client left (its statement runs 30 s+).
BOUND = 10


def slow_statement(dialect: str) -> str:
    if dialect == "postgresql":
        return f"SELECT pg_sleep(30) /* {MARKER} */"
    return "WITH RECURSIVE r(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM r) SELECT count(*) FROM r"


async def _reply(send: Any, status: int, body: Any) -> None:
    payload = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": payload})


def build_app(settings: DatabaseSettings) -> UnitOfWorkMiddleware:
    """Routes that write a note, then wait on the database (or not), then answer 201."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            async with Lifecycle(settings) as lifecycle:
                await create_tables(lifecycle)
                scope["state"][LIFECYCLE_STATE_KEY] = lifecycle
                await receive()
                await send({"type": "lifespan.startup.complete"})
                await receive()
            await send({"type": "lifespan.shutdown.complete"})
            return
        unit = unit_of_work_from_scope(scope)
        path = scope["path"]
        if path == "/async":
            await _write_then_query(unit)
        elif path == "/sync":
            session = await unit.session()
            dialect = session.get_bind().dialect.name

            def work() -> None:
                session.exec(insert(notes).values(body="written"))
                session.exec(text(slow_statement(dialect)))

            await anyio.to_thread.run_sync(work)
        elif path == "/idle":  # holds its transaction while waiting for something else
            session = await unit.async_session()
            await session.exec(insert(notes).values(body="written"))
            await anyio.sleep(30)
        elif path == "/late-body":  # reads its body long after its session opened
            session = await unit.async_session()
            await session.exec(select(1))
            await anyio.sleep(0.3)  # the watch reads ahead meanwhile
            message = await receive()
            await _reply(send, 200, {"body": message["body"].decode()})
            return
        await _reply(send, 201, {})

    return UnitOfWorkMiddleware(app)


async def _write_then_query(unit: UnitOfWork) -> None:
    session = await unit.async_session()
    await session.exec(insert(notes).values(body="written"))
    dialect = session.get_bind().dialect.name
    await session.exec(text(slow_statement(dialect)))


@asynccontextmanager
async def running(settings: DatabaseSettings) -> AsyncIterator[AppRunner]:
    async with AppRunner(build_app(settings)) as runner:
        yield runner


def _lifecycle(runner: AppRunner) -> Lifecycle:
    lifecycle: Lifecycle = runner.state[LIFECYCLE_STATE_KEY]
    return lifecycle


async def _notes(lifecycle: Lifecycle) -> int:
    async with lifecycle.async_session() as session:
        return int((await session.exec(select(func.count()).select_from(notes))).scalar_one())


def _checked_out(lifecycle: Lifecycle) -> int:
    database = lifecycle.database()
    total = 0
    for kind in database.kinds:
        engine = database.async_engine.sync_engine if kind == "async" else database.engine
        total += engine.pool.checkedout()  # type: ignore[attr-defined]
    return total


async def _server_activity(postgresql_url: str) -> list[tuple[str, str]]:
    """(state, query) of every other connection to the test database, seen from outside."""
    connection = await asyncpg.connect(postgresql_url)
    try:
        rows = await connection.fetch(
            "SELECT state, query FROM pg_stat_activity "
            "WHERE datname = current_database() AND pid <> pg_backend_pid()"
        )
    finally:
        await connection.close()
    return [(row["state"], row["query"]) for row in rows]


async def _assert_all_clean(runner: AppRunner, request: pytest.FixtureRequest) -> None:
    lifecycle = _lifecycle(runner)
    assert _checked_out(lifecycle) == 0, "a connection is still checked out"
    assert lifecycle.in_flight == 0
    assert await _notes(lifecycle) == 0, "the unit of a client that left committed"
    if lifecycle.database().settings.url.startswith("postgresql"):
        activity = await _server_activity(request.getfixturevalue("postgresql_url"))
        running_query = [q for s, q in activity if s == "active" and MARKER in q]
        assert running_query == [], "the statement still runs on the server"
        assert not [s for s, _ in activity if s.startswith("idle in transaction")], activity


@pytest.mark.parametrize("path", ["/async", "/sync", "/idle"])
async def test_a_client_gone_mid_statement_stops_it_and_rolls_back(
    make_settings: SettingsFactory,
    request: pytest.FixtureRequest,
    caplog: pytest.LogCaptureFixture,
    path: str,
) -> None:
    """asyncpg, psycopg in a worker thread, aiosqlite and sqlite3; also a unit idle in
    its transaction: stopped at once, rolled back, every connection back, one line."""
    settings = make_settings()
    with caplog.at_level(logging.WARNING, logger="portside"):
        async with running(settings) as runner:
            await runner.disconnect("POST", path, after=0.3)
            with anyio.fail_after(BOUND):
                await runner.wait_idle()
            assert runner.errors == []
            await _assert_all_clean(runner, request)
            # The pool's connections still work.
            async with _lifecycle(runner).async_session() as session:
                assert (await session.exec(text("SELECT 1"))).scalar_one() == 1
    lines = [r.getMessage() for r in caplog.records if "disconnected" in r.getMessage()]
    assert lines == [
        f"portside answered nothing to POST {path}: the client disconnected before the "
        "response started; its unit of work rolled back"
    ]
    assert not [r for r in caplog.records if "answered 50" in r.getMessage()]


async def test_a_unit_interrupt_stops_its_statement(make_settings: SettingsFactory) -> None:
    """The core's own call, without a web request: the awaiting code gets the error."""
    async with Lifecycle(make_settings()) as lifecycle:
        await create_tables(lifecycle)
        unit = lifecycle.unit_of_work()
        with anyio.fail_after(BOUND):
            async with anyio.create_task_group() as group:

                async def interrupt_soon() -> None:
                    await anyio.sleep(0.3)
                    await unit.interrupt()

                group.start_soon(interrupt_soon)
                with pytest.raises(DBAPIError):
                    await _write_then_query(unit)
                await unit.finish(commit=False)
        assert await _notes(lifecycle) == 0
        assert _checked_out(lifecycle) == 0


async def test_a_body_read_after_the_watch_began_reaches_the_app(
    make_settings: SettingsFactory,
) -> None:
    """The watch reads ahead of the app; the body message waits for the app."""
    async with running(make_settings()) as runner:
        response = await runner.request("POST", "/late-body", json={"kept": True})
    assert (response.status, response.json()) == (200, {"body": '{"kept": true}'})


async def test_a_finished_request_is_unaffected(make_settings: SettingsFactory) -> None:
    """A client that hangs up after its response: the unit committed as usual."""
    settings = make_settings()
    async with running(settings) as runner:
        response = await runner.request("POST", "/late-body", json={})
        assert response.status == 200
        await runner.disconnect("POST", "/late-body", json={}, after=1)
        await runner.wait_idle()
        assert runner.errors == []
        assert _checked_out(_lifecycle(runner)) == 0


@pytest.mark.parametrize("engines", ["async", "sync"])
async def test_a_connection_a_cancel_was_sent_on_is_never_pooled_again(
    postgresql_url: str, engines: str
) -> None:
    """A cancel request's signal may land after its statement ended, on the next one.

    So the connection it was sent on is replaced, even when nothing was running: the
    next unit gets a new server process, and its statement is not cancelled.
    """
    settings = DatabaseSettings(url=postgresql_url, engines=engines, pool_size=1, max_overflow=0)
    pid = text("SELECT pg_backend_pid()")
    async with Lifecycle(settings) as lifecycle:
        if engines == "async":
            unit = lifecycle.unit_of_work()
            first = (await (await unit.async_session()).exec(pid)).scalar_one()
            await unit.interrupt()  # idle: the request arrives between statements
            await unit.finish(commit=False)
            async with lifecycle.async_session() as session:
                second = (await session.exec(pid)).scalar_one()
        else:

            def backend() -> int:
                with lifecycle.session() as session:
                    return int(session.exec(pid).scalar_one())

            unit = lifecycle.unit_of_work()
            session = await unit.session()
            first = await anyio.to_thread.run_sync(lambda: session.exec(pid).scalar_one())
            await unit.interrupt()
            await unit.finish(commit=False)
            second = await anyio.to_thread.run_sync(backend)
    assert second != first
