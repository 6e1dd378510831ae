"""SQLite's defaults: pragmas, writers that queue instead of failing, in-memory sharing."""

from __future__ import annotations

from pathlib import Path

import anyio
import anyio.from_thread
import anyio.to_thread
import pytest
from sqlalchemy import func, insert, select, text, update

from portside import DatabaseSettings, Lifecycle
from portside.asgi import error_response
from portside.errors import ReadOnlyUnitWriteError, is_database_unavailable

from .conftest import create_tables, notes

pytestmark = pytest.mark.anyio


def file_settings(tmp_path: Path, **overrides: object) -> DatabaseSettings:
    return DatabaseSettings(url=f"sqlite:///{tmp_path / 'app.db'}", **overrides)  # type: ignore[arg-type]


async def test_every_connection_gets_the_pragmas(tmp_path: Path) -> None:
    settings = file_settings(tmp_path, sqlite_busy_timeout=7.5)
    async with Lifecycle(settings) as lifecycle:
        async with lifecycle.async_session() as session:
            values = {
                name: (await session.exec(text(f"PRAGMA {name}"))).scalar()
                for name in ("foreign_keys", "journal_mode", "busy_timeout", "synchronous")
            }

        def sync_values() -> dict[str, object]:
            with lifecycle.session() as session:
                return {
                    name: session.exec(text(f"PRAGMA {name}")).scalar()
                    for name in ("foreign_keys", "journal_mode", "busy_timeout", "synchronous")
                }

        sync = await anyio.to_thread.run_sync(sync_values)
    expected = {"foreign_keys": 1, "journal_mode": "wal", "busy_timeout": 7500, "synchronous": 1}
    assert values == expected
    assert sync == expected


async def test_twenty_concurrent_read_then_write_units_all_commit(tmp_path: Path) -> None:
    """Plain BEGIN fails these with "database is locked"; BEGIN IMMEDIATE queues them."""
    async with Lifecycle(file_settings(tmp_path, pool_size=20)) as lifecycle:
        await create_tables(lifecycle)
        async with lifecycle.async_session() as session:
            await session.exec(insert(notes).values(id=1, body="0"))

        async def increment_async() -> None:
            async with lifecycle.async_session() as session:
                current = (await session.exec(select(notes.c.body))).scalar_one()
                await anyio.sleep(0.01)  # let the others read the same value
                await session.exec(update(notes).values(body=str(int(current) + 1)))

        def increment_sync() -> None:
            with lifecycle.session() as session:
                current = session.exec(select(notes.c.body)).scalar_one()
                session.exec(update(notes).values(body=str(int(current) + 1)))

        async with anyio.create_task_group() as group:
            for _ in range(10):
                group.start_soon(increment_async)
                group.start_soon(anyio.to_thread.run_sync, increment_sync)
        async with lifecycle.async_session() as session:
            final = (await session.exec(select(notes.c.body))).scalar_one()
    assert final == "20"  # every read-then-write saw the previous one's commit


async def test_read_only_units_run_concurrently(tmp_path: Path) -> None:
    async with Lifecycle(file_settings(tmp_path)) as lifecycle:
        await create_tables(lifecycle)
        first_reading = anyio.Event()
        second_done = anyio.Event()

        async def first() -> None:
            async with lifecycle.async_session(writes=False) as session:
                await session.exec(select(notes))
                first_reading.set()
                with anyio.fail_after(5):
                    await second_done.wait()  # still inside the first transaction

        async def second() -> None:
            await first_reading.wait()
            async with lifecycle.async_session(writes=False) as session:
                await session.exec(select(notes))
            second_done.set()

        async with anyio.create_task_group() as group:
            group.start_soon(first)
            group.start_soon(second)


async def test_in_memory_sync_and_async_sessions_share_one_database() -> None:
    async with Lifecycle(DatabaseSettings(url="sqlite://")) as lifecycle:
        await create_tables(lifecycle)
        async with lifecycle.async_session() as session:
            await session.exec(insert(notes).values(body="from async"))

        def sync_side() -> list[str]:
            with lifecycle.session() as session:
                session.exec(insert(notes).values(body="from sync"))
            with lifecycle.session() as session:
                return sorted(session.exec(select(notes.c.body)).scalars())

        assert await anyio.to_thread.run_sync(sync_side) == ["from async", "from sync"]


async def test_in_memory_rollback_never_erases_another_units_commit() -> None:
    async with Lifecycle(DatabaseSettings(url="sqlite://")) as lifecycle:
        await create_tables(lifecycle)
        a_inserted = anyio.Event()

        async def committer() -> None:
            async with lifecycle.async_session() as session:
                await session.exec(insert(notes).values(body="committed"))
                a_inserted.set()
                await anyio.sleep(0.05)

        async def roller_back() -> None:
            await a_inserted.wait()
            with pytest.raises(RuntimeError):
                async with lifecycle.async_session() as session:
                    await session.exec(insert(notes).values(body="rolled back"))
                    raise RuntimeError("undo mine only")

        async with anyio.create_task_group() as group:
            group.start_soon(committer)
            group.start_soon(roller_back)
        async with lifecycle.async_session() as session:
            bodies = (await session.exec(select(notes.c.body))).scalars().all()
    assert bodies == ["committed"]


async def test_two_in_memory_lifecycles_are_separate_databases() -> None:
    async with (
        Lifecycle(DatabaseSettings(url="sqlite://")) as one,
        Lifecycle(DatabaseSettings(url="sqlite://")) as two,
    ):
        await create_tables(one)
        await create_tables(two)
        async with one.async_session() as session:
            await session.exec(insert(notes).values(body="only in one"))
        async with two.async_session() as session:
            count = (await session.exec(select(func.count()).select_from(notes))).scalar()
    assert count == 0


async def test_startup_fails_loudly_when_sqlite_refuses_wal(tmp_path: Path) -> None:
    from portside import StartupError

    # A read-only database cannot switch to WAL: startup must say so, not limp on.
    path = tmp_path / "readonly.db"
    async with Lifecycle(DatabaseSettings(url=f"sqlite:///{path}")):
        pass
    url = f"sqlite:///file:{path}?mode=ro&uri=true"
    (tmp_path / "readonly.db-wal").unlink(missing_ok=True)
    (tmp_path / "readonly.db-shm").unlink(missing_ok=True)
    import sqlite3

    with sqlite3.connect(path) as raw:
        raw.execute("PRAGMA journal_mode=DELETE")
    raw.close()
    with pytest.raises(StartupError, match="readonly database"):
        async with Lifecycle(DatabaseSettings(url=url, startup_timeout=1)):
            pass


async def test_a_commit_refused_by_a_deferred_constraint_leaves_a_clean_pool(
    tmp_path: Path,
) -> None:
    from sqlalchemy import Column, ForeignKey, Integer, MetaData, Table

    from portside import DatabaseSettings

    schema = MetaData()
    parents = Table("parents", schema, Column("id", Integer, primary_key=True))
    children = Table(
        "children",
        schema,
        Column("id", Integer, primary_key=True),
        Column(
            "parent_id",
            ForeignKey("parents.id", deferrable=True, initially="DEFERRED"),
            nullable=False,
        ),
    )
    settings = DatabaseSettings(url=f"sqlite:///{tmp_path / 'fk.db'}", pool_size=1, max_overflow=0)
    async with Lifecycle(settings) as lifecycle:
        async with lifecycle.database().async_engine.begin() as connection:
            await connection.run_sync(schema.create_all)
        for _ in range(2):  # the second round reuses the connection the first one failed on
            with pytest.raises(Exception, match="FOREIGN KEY constraint failed"):
                async with lifecycle.async_session() as session:
                    await session.exec(insert(children).values(parent_id=404))

            def sync_round() -> None:
                with pytest.raises(Exception, match="FOREIGN KEY"), lifecycle.session() as s:
                    s.exec(insert(children).values(parent_id=404))

            await anyio.to_thread.run_sync(sync_round)
        async with lifecycle.async_session() as session:
            await session.exec(insert(parents).values(id=1))
            await session.exec(insert(children).values(parent_id=1))
        async with lifecycle.async_session() as session:
            assert (await session.exec(select(func.count()).select_from(children))).scalar() == 1


async def test_a_unit_that_cannot_get_in_releases_everything(tmp_path: Path) -> None:
    """Waiting for the in-memory gate times out cleanly, sync and async alike."""
    from sqlalchemy.exc import TimeoutError as PoolTimeoutError

    settings = DatabaseSettings(url="sqlite://", pool_timeout=0.2)
    async with Lifecycle(settings) as lifecycle:
        holder_in = anyio.Event()
        release = anyio.Event()

        async def holder() -> None:
            async with lifecycle.async_session() as session:
                await session.exec(select(1))  # the gate is taken at the first statement
                holder_in.set()
                await release.wait()

        def blocked_sync() -> None:
            with pytest.raises(PoolTimeoutError), lifecycle.session() as session:
                session.exec(select(1))

        async with anyio.create_task_group() as group:
            group.start_soon(holder)
            await holder_in.wait()
            with pytest.raises(PoolTimeoutError):
                async with lifecycle.async_session() as session:
                    await session.exec(select(1))
            await anyio.to_thread.run_sync(blocked_sync)
            release.set()
        assert lifecycle.in_flight == 0
        async with lifecycle.async_session() as session:  # the gate is free again
            await session.exec(select(1))


@pytest.mark.parametrize("kind", ["async", "sync"])
async def test_a_write_in_a_read_only_unit_that_meets_the_lock_says_why(
    tmp_path: Path, kind: str
) -> None:
    """A read-only unit (GET) begins a plain BEGIN: once it has read, its write cannot
    wait for the lock another unit took since. The error says so, and is no outage."""
    async with Lifecycle(file_settings(tmp_path)) as lifecycle:
        await create_tables(lifecycle)
        async with lifecycle.async_session() as session:
            await session.exec(insert(notes).values(id=1, body="0"))

        async def write_meanwhile() -> None:
            async with lifecycle.async_session() as writer:
                await writer.exec(update(notes).values(body="writer"))

        if kind == "async":
            with pytest.raises(Exception) as caught:  # noqa: PT011 - the type is asserted below
                async with lifecycle.async_session(writes=False) as reader:
                    await reader.exec(select(notes))  # its snapshot
                    await write_meanwhile()
                    await reader.exec(update(notes).values(body="reader"))
        else:

            def read_then_write() -> None:
                with lifecycle.session(writes=False) as reader:
                    reader.exec(select(notes))
                    anyio.from_thread.run(write_meanwhile)
                    reader.exec(update(notes).values(body="reader"))

            with pytest.raises(Exception) as caught:  # noqa: PT011
                await anyio.to_thread.run_sync(read_then_write)
        async with lifecycle.async_session() as session:
            assert (await session.exec(select(notes.c.body))).scalar_one() == "writer"
    assert isinstance(caught.value, ReadOnlyUnitWriteError), repr(caught.value)
    message = str(caught.value)
    assert "read-only" in message
    assert "GET" in message
    assert "writes=True" in message
    assert "database is locked" in message  # what SQLite said
    assert not is_database_unavailable(caught.value)
    assert error_response(caught.value)[0] == 500


async def test_a_read_only_unit_may_still_write_when_nobody_else_does(tmp_path: Path) -> None:
    async with Lifecycle(file_settings(tmp_path)) as lifecycle:
        await create_tables(lifecycle)
        async with lifecycle.async_session(writes=False) as session:
            await session.exec(insert(notes).values(id=1, body="from a GET"))
        async with lifecycle.async_session() as session:
            assert (await session.exec(select(func.count()).select_from(notes))).scalar_one() == 1
