"""portside's aiosqlite connection: fewer thread trips, the same transactions."""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import aiosqlite
import anyio
import pytest
from sqlalchemy import func, insert, select, text, update
from sqlalchemy.exc import OperationalError

from portside import DatabaseSettings, Lifecycle
from portside.adapters.aiosqlite_connection import PREFETCH_ROWS, AiosqliteConnection

from .conftest import create_tables, notes

pytestmark = pytest.mark.anyio


def settings_for(tmp_path: Path, **overrides: Any) -> DatabaseSettings:
    return DatabaseSettings(url=f"sqlite:///{tmp_path / 'trips.db'}", engines="async", **overrides)


@pytest.fixture
def trips(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every call queued on an aiosqlite worker thread, in order."""
    queued: list[str] = []
    original = aiosqlite.Connection._execute

    async def counting(self: aiosqlite.Connection, fn: Any, *args: Any, **kwargs: Any) -> Any:
        queued.append(getattr(fn, "__name__", repr(fn)))
        return await original(self, fn, *args, **kwargs)

    monkeypatch.setattr(aiosqlite.Connection, "_execute", counting)
    return queued


async def test_a_read_and_a_write_take_two_trips_each(tmp_path: Path, trips: list[str]) -> None:
    async with Lifecycle(settings_for(tmp_path)) as lifecycle:
        await create_tables(lifecycle)
        async with lifecycle.async_session() as session:
            await session.exec(insert(notes).values(id=1, body="one"))
        trips.clear()
        async with lifecycle.async_session() as session:  # BEGIN IMMEDIATE + INSERT, COMMIT
            await session.exec(insert(notes).values(id=2, body="two"))
        assert len(trips) == 2
        trips.clear()
        async with lifecycle.async_session(writes=False) as session:  # BEGIN + SELECT, COMMIT
            row = (await session.exec(select(notes).where(notes.c.id == 1))).one()
        assert row.body == "one"
        assert len(trips) == 2


async def test_a_read_only_unit_reads_one_snapshot(tmp_path: Path) -> None:
    """The deferred BEGIN still runs before the first statement, not after it."""
    count = select(func.count()).select_from(notes)
    async with Lifecycle(settings_for(tmp_path)) as lifecycle:
        await create_tables(lifecycle)
        async with lifecycle.async_session(writes=False) as reader:
            before = (await reader.exec(count)).scalar()
            async with lifecycle.async_session() as writer:
                await writer.exec(insert(notes).values(body="committed meanwhile"))
            again = (await reader.exec(count)).scalar()
        async with lifecycle.async_session(writes=False) as later:
            after = (await later.exec(count)).scalar()
    assert (before, again, after) == (0, 0, 1)


async def test_results_larger_than_the_prefetch_arrive_whole(tmp_path: Path) -> None:
    total = 2 * PREFETCH_ROWS + 7
    rows = [{"body": f"note {i}"} for i in range(total)]
    ordered = select(notes.c.id).order_by(notes.c.id)
    async with Lifecycle(settings_for(tmp_path)) as lifecycle:
        await create_tables(lifecycle)
        async with lifecycle.async_session() as session:
            await session.exec(insert(notes), params=rows)  # executemany
        async with lifecycle.async_session(writes=False) as session:
            buffered = (await session.exec(ordered)).scalars().all()
            streamed = [i async for i in await session.stream_scalars(ordered)]
            partial = await session.stream_scalars(ordered)
            first = await partial.fetchmany(3)
            await partial.close()  # rows left unfetched: the cursor closes cleanly
            still_usable = (await session.exec(select(func.count()).select_from(notes))).scalar()
    assert buffered == streamed == list(range(1, total + 1))
    assert first == [1, 2, 3]
    assert still_usable == total


async def test_rowcount_and_new_ids_are_reported(tmp_path: Path) -> None:
    async with Lifecycle(settings_for(tmp_path)) as lifecycle:
        await create_tables(lifecycle)
        async with lifecycle.async_session() as session:
            first = await session.exec(insert(notes).values(body="a"))
            second = await session.exec(insert(notes).values(body="b"))
            changed = await session.exec(update(notes).values(body="c"))
    assert (first.inserted_primary_key[0], second.inserted_primary_key[0]) == (1, 2)
    assert changed.rowcount == 2


async def test_a_begin_refused_by_a_lock_fails_the_statement_and_nothing_else(
    tmp_path: Path,
) -> None:
    """Another process holds the write lock past the busy timeout: the unit fails, cleanly."""
    settings = settings_for(tmp_path, sqlite_busy_timeout=0.1, pool_size=1, max_overflow=0)
    async with Lifecycle(settings) as lifecycle:
        await create_tables(lifecycle)
        other = sqlite3.connect(tmp_path / "trips.db", isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            with pytest.raises(OperationalError, match="database is locked"):
                async with lifecycle.async_session() as session:
                    await session.exec(insert(notes).values(body="refused"))
            other.execute("ROLLBACK")
        finally:
            other.close()
        async with lifecycle.async_session() as session:  # the same, only connection
            await session.exec(insert(notes).values(body="accepted"))
        async with lifecycle.async_session(writes=False) as session:
            bodies = (await session.exec(select(notes.c.body))).scalars().all()
    assert bodies == ["accepted"]


async def test_a_unit_cancelled_in_its_first_statement_leaves_no_transaction_open(
    tmp_path: Path,
) -> None:
    """The pool's rollback is skipped only when no trip that could begin one is in flight."""
    settings = settings_for(tmp_path, pool_size=1, max_overflow=0)
    async with Lifecycle(settings) as lifecycle:
        engine = lifecycle.database().async_engine
        await create_tables(lifecycle)
        async with engine.connect() as connection:
            raw = await connection.get_raw_connection()
            driver = raw.driver_connection
            assert isinstance(driver, AiosqliteConnection)
            await driver.create_function("portside_sleep", 1, time.sleep)
            await connection.rollback()
        with anyio.move_on_after(0.05) as scope:
            async with lifecycle.async_session(writes=False) as session:
                await session.exec(text("SELECT portside_sleep(0.3)"))
        assert scope.cancelled_caught
        await anyio.sleep(0.5)  # the abandoned statement has finished on its thread
        assert engine.sync_engine.pool.checkedout() == 0  # type: ignore[attr-defined]
        async with engine.connect() as connection:
            raw = await connection.get_raw_connection()
            assert not raw.driver_connection.in_transaction  # type: ignore[union-attr]
        async with lifecycle.async_session() as session:
            await session.exec(insert(notes).values(body="after the cancelled one"))


async def _execute(connection: AiosqliteConnection, sql: str) -> None:
    await connection.execute(sql)


async def test_rollback_waits_for_a_queued_begin_of_a_cancelled_caller(tmp_path: Path) -> None:
    """A trip still queued may yet begin a transaction: rollback must not be skipped then."""
    path = tmp_path / "race.db"
    connection = await AiosqliteConnection(
        functools.partial(sqlite3.connect, path, isolation_level=None, check_same_thread=False)
    )
    try:
        await connection.create_function("portside_sleep", 1, time.sleep)
        async with anyio.create_task_group() as group:
            # Keeps it busy (a coroutine function: anyio 4.6 takes nothing else).
            group.start_soon(_execute, connection, "SELECT portside_sleep(0.2)")
            await anyio.sleep(0.02)
            connection.defer_begin("BEGIN")
            with anyio.move_on_after(0.02):
                await connection.execute("SELECT 1")  # queued behind it, its caller gives up
            assert not connection.in_transaction  # its BEGIN has not run yet...
            await connection.rollback()  # ...but will, before this rollback
        await connection.execute("SELECT 2")  # queued last: every earlier trip is done
        assert not connection.in_transaction
    finally:
        await connection.close()


async def test_a_begin_that_failed_is_still_owed_to_the_next_statement(tmp_path: Path) -> None:
    """A caller that retries after "database is locked" stays inside a transaction."""
    path = tmp_path / "owed.db"
    connection = await AiosqliteConnection(
        functools.partial(sqlite3.connect, path, isolation_level=None, check_same_thread=False)
    )
    other = sqlite3.connect(path, isolation_level=None)
    try:
        await connection.execute("PRAGMA busy_timeout=50")
        other.execute("BEGIN IMMEDIATE")
        connection.defer_begin("BEGIN IMMEDIATE")
        with pytest.raises(sqlite3.OperationalError, match="database is locked"):
            await connection.execute("SELECT 1")
        other.execute("ROLLBACK")
        await connection.execute("SELECT 1")  # the retry begins the transaction first
        assert connection.in_transaction
        await connection.rollback()
    finally:
        other.close()
        await connection.close()


def test_a_failed_connect_stops_its_thread_before_raising(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The caller's event loop may close as soon as connecting failed (a test ends, a
    startup gives up): aiosqlite's thread must not report to it afterwards, which is
    "Event loop is closed" raised in that thread (an error in whichever test runs next).
    """
    failures: list[Any] = []
    monkeypatch.setattr(threading, "excepthook", failures.append)
    missing = str(tmp_path / "missing-directory" / "app.db")
    connection = AiosqliteConnection(functools.partial(sqlite3.connect, missing))

    async def connect() -> None:
        await connection

    loop = asyncio.new_event_loop()
    try:
        with pytest.raises(sqlite3.OperationalError, match="unable to open"):
            loop.run_until_complete(connect())
    finally:
        loop.close()  # at once, as a test runner does
    for thread in threading.enumerate():
        if thread.name.endswith("(_connection_worker_thread)"):
            thread.join(timeout=10)
    assert [str(failure.exc_value) for failure in failures] == []
