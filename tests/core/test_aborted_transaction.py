"""A unit in which a statement failed, and the failure was not undone, never commits.

PostgreSQL aborts the transaction and answers COMMIT with ROLLBACK without an error;
SQLite would commit the statements before the failure. Both must refuse, the same
way, for asyncpg, psycopg, aiosqlite and pysqlite; rolling back a SAVEPOINT that
began before the failure is the legitimate recovery.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast

import anyio
import anyio.to_thread
import psycopg
import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, insert, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.orm import Session as ORMSession

from portside import DatabaseSettings, Lifecycle, Session, TransactionAbortedError
from portside_testing.outer_transaction import OuterTransaction

pytestmark = pytest.mark.anyio

metadata = MetaData()
# A table of its own: another session's tests may be using the core notes table.
rows = Table(
    "portside_aborted_rows",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("body", String(50), nullable=False),
)

Work = Callable[[Session], None]


class UndoError(Exception):
    """Raised inside a SAVEPOINT to roll it back."""


@pytest.fixture(params=["sqlite-file", "sqlite-memory", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=["async", "sync"])
def mode(request: pytest.FixtureRequest) -> str:
    """async: asyncpg / aiosqlite; sync: psycopg / pysqlite from a worker thread."""
    return str(request.param)


@pytest.fixture
def app_name() -> str:
    return f"portside-aborted-{uuid.uuid4().hex[:12]}"


@pytest.fixture
def settings(backend: str, app_name: str, tmp_path: Path, request: pytest.FixtureRequest) -> Any:
    if backend == "sqlite-file":
        url = f"sqlite:///{tmp_path / 'aborted.db'}"
    elif backend == "sqlite-memory":
        url = "sqlite://"
    else:
        url = f"{request.getfixturevalue('postgresql_url')}?application_name={app_name}"
    return DatabaseSettings(url=url, startup_timeout=10.0)


async def create_table(lifecycle: Lifecycle) -> None:
    async with lifecycle.database().async_engine.begin() as connection:
        await connection.run_sync(metadata.drop_all)
        await connection.run_sync(metadata.create_all)


def add(session: Session, id_: int, body: str) -> None:
    session.exec(insert(rows).values(id=id_, body=body))


def add_duplicate(session: Session) -> None:
    """Insert id 1 again: a duplicate key, caught and ignored (the handler's mistake)."""
    with contextlib.suppress(IntegrityError):
        session.exec(text(f"INSERT INTO {rows.name} (id, body) VALUES (1, 'duplicate')"))


async def run_unit(lifecycle: Lifecycle, mode: str, work: Work) -> None:
    """Run ``work`` in one unit of work of the ``mode`` engine, committing at the end."""
    if mode == "async":
        async with lifecycle.async_session() as session:
            await session.run_sync(cast("Callable[[ORMSession], None]", work))
        return

    def blocking() -> None:
        with lifecycle.session() as session:
            work(session)

    await anyio.to_thread.run_sync(blocking)


async def stored(lifecycle: Lifecycle) -> list[str]:
    async with lifecycle.async_session(writes=False) as session:
        return list((await session.exec(select(rows.c.body).order_by(rows.c.id))).scalars())


def idle_in_transaction(postgresql_url: str, app_name: str) -> list[str]:
    with psycopg.connect(postgresql_url, autocommit=True) as connection:
        found = connection.execute(
            "SELECT state FROM pg_stat_activity "
            "WHERE application_name = %s AND datname = current_database() "
            "AND state LIKE 'idle in transaction%%'",
            (app_name,),
        ).fetchall()
    return [str(state) for (state,) in found]


async def assert_clean(lifecycle: Lifecycle, mode: str, app_name: str) -> None:
    """Every connection is back in its pool, out of any transaction, and usable."""
    assert [pool.checked_out for pool in lifecycle.database().pool_status().values()] == [0, 0]
    if lifecycle.database().settings.sync_url_object.get_backend_name() == "postgresql":
        url = lifecycle.database().settings.sync_url_object.set(drivername="postgresql", query={})
        plain = url.render_as_string(hide_password=False)
        assert await anyio.to_thread.run_sync(idle_in_transaction, plain, app_name) == []
    # The same pooled connection takes a new unit (SQLite: a dirty one could not BEGIN).
    before = len(await stored(lifecycle))
    await run_unit(lifecycle, mode, lambda session: add(session, 99, "next unit"))
    assert len(await stored(lifecycle)) == before + 1


@pytest.fixture
async def lifecycle(settings: DatabaseSettings) -> AsyncIterator[Lifecycle]:
    async with Lifecycle(settings) as lifecycle:
        await create_table(lifecycle)
        yield lifecycle


async def test_a_caught_failure_refuses_to_commit(
    lifecycle: Lifecycle, mode: str, app_name: str
) -> None:
    # The handler, as written: native async (asyncpg, aiosqlite) or sync.
    if mode == "async":
        with pytest.raises(TransactionAbortedError, match=r"IntegrityError.*begin_nested"):
            async with lifecycle.async_session() as session:
                await session.exec(insert(rows).values(id=1, body="first"))
                with contextlib.suppress(Exception):
                    await session.exec(text(f"INSERT INTO {rows.name} VALUES (1, 'again')"))
    else:

        def handler() -> None:
            with lifecycle.session() as session:
                session.exec(insert(rows).values(id=1, body="first"))
                with contextlib.suppress(Exception):
                    session.exec(text(f"INSERT INTO {rows.name} VALUES (1, 'again')"))

        with pytest.raises(TransactionAbortedError, match="IntegrityError"):
            await anyio.to_thread.run_sync(handler)
    assert await stored(lifecycle) == []
    await assert_clean(lifecycle, mode, app_name)


async def test_a_unit_with_an_isolation_level_refuses_too(
    lifecycle: Lifecycle, mode: str, app_name: str
) -> None:
    # The level gives the session a copy of the engine (execution_options()), whose
    # connections must keep their failures like the engine's own.
    def caught(session: Session) -> None:
        add(session, 1, "first")
        add_duplicate(session)

    with pytest.raises(TransactionAbortedError, match="IntegrityError"):
        if mode == "async":
            async with lifecycle.async_session(isolation_level="SERIALIZABLE") as session:
                await session.run_sync(cast("Callable[[ORMSession], None]", caught))
        else:

            def blocking() -> None:
                with lifecycle.session(isolation_level="SERIALIZABLE") as session:
                    caught(session)

            await anyio.to_thread.run_sync(blocking)
    assert await stored(lifecycle) == []
    await assert_clean(lifecycle, mode, app_name)


async def test_a_rolled_back_savepoint_undoes_the_failure(
    lifecycle: Lifecycle, mode: str, app_name: str
) -> None:
    def recovered(session: Session) -> None:
        add(session, 1, "first")
        try:
            with session.begin_nested():
                add(session, 2, "undone with its savepoint")
                add(session, 1, "duplicate")
        except IntegrityError:
            pass
        add(session, 3, "after")

    await run_unit(lifecycle, mode, recovered)
    assert await stored(lifecycle) == ["first", "after"]

    def not_recovered(session: Session) -> None:
        add(session, 4, "fourth")
        add_duplicate(session)

    with pytest.raises(TransactionAbortedError):
        await run_unit(lifecycle, mode, not_recovered)
    assert await stored(lifecycle) == ["first", "after"]
    await assert_clean(lifecycle, mode, app_name)


async def test_nested_savepoints_undo_only_what_began_after_them(
    lifecycle: Lifecycle, mode: str, app_name: str
) -> None:
    def inner_undone(session: Session) -> None:
        add(session, 1, "root")
        with session.begin_nested():
            add(session, 2, "outer savepoint")
            try:
                with session.begin_nested():
                    add(session, 3, "inner savepoint, undone")
                    add(session, 1, "duplicate")
            except IntegrityError:
                pass
            add(session, 4, "outer savepoint, after")

    await run_unit(lifecycle, mode, inner_undone)
    assert await stored(lifecycle) == ["root", "outer savepoint", "outer savepoint, after"]

    def failure_before_the_inner_savepoint(session: Session) -> None:
        add(session, 5, "root")
        with session.begin_nested():
            add_duplicate(session)  # fails in the outer savepoint
            # PostgreSQL refuses even the SAVEPOINT in an aborted transaction.
            with contextlib.suppress(UndoError, DBAPIError), session.begin_nested():
                add(session, 6, "inner")
                raise UndoError
        # The outer savepoint's failure was not undone: its release refuses.

    with pytest.raises(TransactionAbortedError):
        await run_unit(lifecycle, mode, failure_before_the_inner_savepoint)
    assert await stored(lifecycle) == ["root", "outer savepoint", "outer savepoint, after"]
    await assert_clean(lifecycle, mode, app_name)


async def test_a_released_savepoint_keeps_its_failure(
    lifecycle: Lifecycle, mode: str, app_name: str
) -> None:
    def released(session: Session) -> None:
        add(session, 1, "root")
        with session.begin_nested():
            add(session, 2, "savepoint")
            add_duplicate(session)  # caught inside: the savepoint is released

    with pytest.raises(TransactionAbortedError):
        await run_unit(lifecycle, mode, released)
    assert await stored(lifecycle) == []

    def released_inner(session: Session) -> None:
        add(session, 1, "root")
        with session.begin_nested():
            with session.begin_nested():
                add_duplicate(session)
                # released with the failure inside: both savepoints refuse to keep it
            add(session, 2, "never reached")

    with pytest.raises(TransactionAbortedError):
        await run_unit(lifecycle, mode, released_inner)
    assert await stored(lifecycle) == []

    def refusal_caught(session: Session) -> None:
        add(session, 1, "root")
        # The refused SAVEPOINT was rolled back: catching that leaves a usable,
        # clean transaction, as rolling the SAVEPOINT back would have.
        with contextlib.suppress(TransactionAbortedError), session.begin_nested():
            add(session, 2, "savepoint, undone")
            add_duplicate(session)
        add(session, 3, "after")

    await run_unit(lifecycle, mode, refusal_caught)
    assert await stored(lifecycle) == ["root", "after"]
    await assert_clean(lifecycle, mode, app_name)


async def test_a_unit_inside_an_outer_transaction_refuses_at_its_commit(
    settings: DatabaseSettings, mode: str
) -> None:
    with OuterTransaction():
        async with Lifecycle(settings) as lifecycle:
            await create_table(lifecycle)  # on a connection of its own, committed

            def caught(session: Session) -> None:
                add(session, 1, "first")
                add_duplicate(session)

            # The session's commit releases its SAVEPOINT: that refuses.
            with pytest.raises(TransactionAbortedError):
                await run_unit(lifecycle, mode, caught)
            # The outer transaction is still usable, without the refused unit's rows.
            await run_unit(lifecycle, mode, lambda session: add(session, 2, "next unit"))
            found: list[str] = []
            await run_unit(
                lifecycle,
                mode,
                lambda session: found.extend(session.exec(select(rows.c.body)).scalars()),
            )
            assert found == ["next unit"]
            pools = lifecycle.database().pool_status()
            # Only the outer connection (the async engine's, for sync units too).
            assert sum(pool.checked_out for pool in pools.values()) == 1
    if settings.sync_url_object.database:  # a file or a server: check nothing stayed
        async with Lifecycle(settings) as after:
            assert await stored(after) == []
