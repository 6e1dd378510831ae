"""One table of what database failures mean, whichever driver reports them.

Each row is provoked for real, through SQLAlchemy engines (no portside adapter, no
web framework), with both drivers of its backend: psycopg and asyncpg against the
PostgreSQL server, pysqlite and aiosqlite against files.
"""

from __future__ import annotations

import contextlib
import socket
import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
from sqlalchemy import Connection as SyncConnection
from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from portside.asgi import error_response, send_error
from portside.errors import ShuttingDownError, UnitOfWorkEndedError, is_database_unavailable
from portside.failures import Kind, classify
from portside.serial_gate import SerialGate

pytestmark = pytest.mark.anyio

TABLE = "portside_failures"
#: Roles are cluster-wide: the role is named after the test's database, so parallel
#: workers (each with its own database) never drop each other's.
LIMITED_ROLE = "portside_failures_limited_{database}"


class Connection:
    """One connection of either driver, driven from async code (sync ones in a thread)."""

    def __init__(self, engine: Engine | AsyncEngine) -> None:
        self._engine = engine
        self._sync: SyncConnection | None = None
        self._async: AsyncConnection | None = None

    async def open(self) -> Connection:
        if isinstance(self._engine, AsyncEngine):
            self._async = await self._engine.connect()
        else:
            self._sync = await anyio.to_thread.run_sync(self._engine.connect)
        return self

    async def _call(self, name: str, *args: Any) -> Any:
        if self._async is not None:
            return await getattr(self._async, name)(*args)
        return await anyio.to_thread.run_sync(getattr(self._sync, name), *args)

    async def execute(self, sql: str) -> Any:
        result = await self._call("exec_driver_sql", sql)
        return result.scalar() if result.returns_rows else None

    async def commit(self) -> None:
        await self._call("commit")

    async def rollback(self) -> None:
        await self._call("rollback")

    async def close(self) -> None:
        await self._call("close")


Connect = Callable[..., Awaitable[Connection]]


def closed_port() -> int:
    """A local TCP port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def connect(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[str, Connect]]:
    """``(url, connect)``: ``connect(**engine_options)`` opens a connection to the
    parametrized driver's database; every engine is disposed at the end."""
    driver: str = request.param
    if driver in ("psycopg", "asyncpg"):
        url = make_url(request.getfixturevalue("postgresql_url"))
        url = url.set(drivername=f"postgresql+{driver}")
    else:
        url = make_url(f"sqlite+{driver}:///{tmp_path / 'failures.db'}")
    engines: list[Engine | AsyncEngine] = []
    connections: list[Connection] = []

    async def open_connection(target: Any = None, **options: Any) -> Connection:
        target = url if target is None else target
        engine: Engine | AsyncEngine
        if driver in ("asyncpg", "aiosqlite"):
            engine = create_async_engine(target, **options)
        else:
            engine = create_engine(target, **options)
        engines.append(engine)
        connection = Connection(engine)
        await connection.open()
        connections.append(connection)
        return connection

    try:
        setup = await open_connection()
        await setup.execute(f"DROP TABLE IF EXISTS {TABLE}")
        await setup.execute(f"CREATE TABLE {TABLE} (id INTEGER PRIMARY KEY, v INTEGER)")
        await setup.execute(f"INSERT INTO {TABLE} VALUES (1, 0), (2, 0)")
        await setup.commit()
        yield url.render_as_string(hide_password=False), open_connection
    finally:
        for connection in connections:
            # A killed connection may not close cleanly; the test is about other things.
            with anyio.move_on_after(5), contextlib.suppress(Exception):
                await connection.close()
        for engine in engines:
            if isinstance(engine, AsyncEngine):
                await engine.dispose()
            else:
                await anyio.to_thread.run_sync(engine.dispose)


POSTGRESQL = pytest.mark.parametrize("connect", ["psycopg", "asyncpg"], indirect=True)
SQLITE = pytest.mark.parametrize("connect", ["pysqlite", "aiosqlite"], indirect=True)
Setup = tuple[str, Connect]


async def failure_of(action: Awaitable[Any]) -> BaseException:
    try:
        await action
    except Exception as exc:  # the failure under test
        return exc
    raise AssertionError("the database accepted what should have failed")


def assert_row(exc: BaseException, kind: Kind) -> None:
    """``exc`` falls in ``kind``'s row, and every public answer agrees."""
    failure = classify(exc)
    assert failure.kind is kind, (failure, repr(exc))
    status, body = error_response(exc)
    assert status == kind.value
    assert body == {"detail": failure.detail}
    assert is_database_unavailable(exc) is (kind is not Kind.BUG)


# -- PostgreSQL, both drivers ------------------------------------------------------------


@POSTGRESQL
async def test_deadlock_is_a_conflict(connect: Setup) -> None:
    _, open_connection = connect
    first, second = await open_connection(), await open_connection()
    await first.execute(f"UPDATE {TABLE} SET v = 1 WHERE id = 1")
    await second.execute(f"UPDATE {TABLE} SET v = 1 WHERE id = 2")
    errors: list[BaseException] = []

    async def cross(connection: Connection, row: int) -> None:
        try:
            await connection.execute(f"UPDATE {TABLE} SET v = 2 WHERE id = {row}")
        except Exception as exc:
            errors.append(exc)
            await connection.rollback()  # releases its locks: the other one goes on

    with anyio.fail_after(20):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(cross, first, 2)
            await anyio.sleep(0.2)
            tasks.start_soon(cross, second, 1)
    assert len(errors) == 1
    assert_row(errors[0], Kind.CONFLICT)
    assert classify(errors[0]).cause == "deadlock"


@POSTGRESQL
async def test_serialization_failure_is_a_conflict(connect: Setup) -> None:
    _, open_connection = connect
    first, second = await open_connection(), await open_connection()
    for connection in (first, second):
        await connection.execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
        await connection.execute(f"SELECT sum(v) FROM {TABLE}")
    await first.execute(f"UPDATE {TABLE} SET v = v + 1 WHERE id = 1")
    await second.execute(f"UPDATE {TABLE} SET v = v + 1 WHERE id = 2")
    await first.commit()
    exc = await failure_of(second.commit())
    assert_row(exc, Kind.CONFLICT)
    assert classify(exc).cause == "serialization failure"


@POSTGRESQL
async def test_lock_not_available_is_a_conflict(connect: Setup) -> None:
    _, open_connection = connect
    first, second = await open_connection(), await open_connection()
    await first.execute(f"SELECT v FROM {TABLE} WHERE id = 1 FOR UPDATE")
    exc = await failure_of(second.execute(f"SELECT v FROM {TABLE} WHERE id = 1 FOR UPDATE NOWAIT"))
    assert_row(exc, Kind.CONFLICT)


@POSTGRESQL
async def test_statement_timeout_is_a_timeout(connect: Setup) -> None:
    _, open_connection = connect
    connection = await open_connection()
    await connection.execute("SET statement_timeout = '100ms'")
    exc = await failure_of(connection.execute("SELECT pg_sleep(2)"))
    assert_row(exc, Kind.TIMEOUT)
    assert error_response(exc)[0] == 504


@POSTGRESQL
async def test_killed_backend_is_unavailable(connect: Setup) -> None:
    _, open_connection = connect
    victim, killer = await open_connection(), await open_connection()
    pid = await victim.execute("SELECT pg_backend_pid()")
    await killer.execute(f"SELECT pg_terminate_backend({pid})")
    await anyio.sleep(0.2)
    exc = await failure_of(victim.execute("SELECT 1"))
    assert_row(exc, Kind.UNAVAILABLE)


@POSTGRESQL
async def test_refused_connection_is_unavailable(connect: Setup) -> None:
    url, open_connection = connect
    closed = make_url(url).set(host="127.0.0.1", port=closed_port())
    exc = await failure_of(open_connection(closed))
    assert_row(exc, Kind.UNAVAILABLE)
    assert classify(exc).heals


@POSTGRESQL
async def test_too_many_connections_is_unavailable(connect: Setup) -> None:
    url, open_connection = connect
    role = LIMITED_ROLE.format(database=make_url(url).database)
    admin = await open_connection()
    await admin.execute(f'DROP ROLE IF EXISTS "{role}"')
    await admin.execute(f'CREATE ROLE "{role}" LOGIN CONNECTION LIMIT 0')
    await admin.commit()
    try:
        limited = make_url(url).set(username=role, password=None)
        exc = await failure_of(open_connection(limited))
    finally:
        await admin.execute(f'DROP ROLE "{role}"')
        await admin.commit()
    assert_row(exc, Kind.UNAVAILABLE)
    assert classify(exc).heals


@POSTGRESQL
async def test_write_on_a_read_only_server_is_unavailable(connect: Setup) -> None:
    _, open_connection = connect
    connection = await open_connection()
    await connection.execute("SET TRANSACTION READ ONLY")
    exc = await failure_of(connection.execute(f"UPDATE {TABLE} SET v = 3"))
    assert_row(exc, Kind.UNAVAILABLE)


@POSTGRESQL
async def test_exhausted_pool_is_unavailable(connect: Setup) -> None:
    url, _ = connect
    options = {"pool_size": 1, "max_overflow": 0, "pool_timeout": 0.1}
    if "asyncpg" in url:
        engine = create_async_engine(url, **options)
        async with engine.connect():
            exc = await failure_of(engine.connect())
        await engine.dispose()
    else:
        sync_engine = create_engine(url, **options)
        with sync_engine.connect():
            exc = await failure_of(anyio.to_thread.run_sync(sync_engine.connect))
        sync_engine.dispose()
    assert_row(exc, Kind.UNAVAILABLE)


@POSTGRESQL
@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM portside_no_such_table",
        "SELEC 1",
        f"INSERT INTO {TABLE} VALUES (1, 0)",  # duplicate key
    ],
)
async def test_sql_errors_are_bugs(connect: Setup, sql: str) -> None:
    _, open_connection = connect
    connection = await open_connection()
    exc = await failure_of(connection.execute(sql))
    assert_row(exc, Kind.BUG)
    assert not classify(exc).heals


# -- SQLite, both drivers ----------------------------------------------------------------


@SQLITE
@pytest.mark.parametrize("sql", ["SELECT * FROM portside_no_such_table", "SELEC 1"])
async def test_sqlite_sql_errors_are_bugs_not_unavailability(connect: Setup, sql: str) -> None:
    _, open_connection = connect
    connection = await open_connection()
    exc = await failure_of(connection.execute(sql))
    assert_row(exc, Kind.BUG)


@SQLITE
async def test_sqlite_locked_past_the_busy_timeout_is_unavailable(connect: Setup) -> None:
    url, open_connection = connect
    holder = sqlite3.connect(str(make_url(url).database), isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")
        connection = await open_connection(connect_args={"timeout": 0.1})
        exc = await failure_of(connection.execute(f"UPDATE {TABLE} SET v = 5"))
    finally:
        holder.close()
    assert_row(exc, Kind.UNAVAILABLE)


@SQLITE
async def test_sqlite_file_that_cannot_be_opened_is_unavailable(
    connect: Setup, tmp_path: Path
) -> None:
    url, open_connection = connect
    missing = make_url(url).set(database=str(tmp_path / uuid.uuid4().hex / "x.db"))
    exc = await failure_of(open_connection(missing))
    assert_row(exc, Kind.UNAVAILABLE)
    assert not classify(exc).heals


# -- raw errors and portside's own ----------------------------------------------------------


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError(111, "Connect call failed"),
        ConnectionResetError(104, "Connection reset by peer"),
        ConnectionError("unexpected connection_lost() call"),
        TimeoutError(),
        OSError(113, "No route to host"),
    ],
)
def test_raw_network_errors_are_unavailable(exc: BaseException) -> None:
    # asyncpg raises these unwrapped; SQLAlchemy passes them on as they are.
    assert_row(exc, Kind.UNAVAILABLE)


def test_portside_errors() -> None:
    assert_row(ShuttingDownError("shutting down"), Kind.UNAVAILABLE)
    assert_row(SerialGate(0.1)._timed_out(), Kind.UNAVAILABLE)  # the SQLite writer gate
    assert_row(UnitOfWorkEndedError("ended"), Kind.BUG)


def test_other_exceptions_are_bugs() -> None:
    assert_row(ValueError("boom"), Kind.BUG)
    assert_row(KeyError("id"), Kind.BUG)


async def test_send_error_sends_retry_after_where_retrying_helps() -> None:
    sent: list[dict[str, Any]] = []

    async def send(message: Any) -> None:
        sent.append(message)

    await send_error(send, ConnectionRefusedError(111, "refused"), instead_of="the test")
    headers = dict(sent[0]["headers"])
    assert sent[0]["status"] == 503
    assert headers[b"retry-after"] == b"1"

    sent.clear()
    await send_error(send, ValueError("bug"), instead_of="the test")
    assert sent[0]["status"] == 500
    assert b"retry-after" not in dict(sent[0]["headers"])


def test_every_kind_has_its_documented_status() -> None:
    assert {kind: kind.value for kind in Kind} == {
        Kind.UNAVAILABLE: 503,
        Kind.CONFLICT: 409,
        Kind.TIMEOUT: 504,
        Kind.BUG: 500,
    }
