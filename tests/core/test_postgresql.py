"""PostgreSQL's defaults, read off the engines the lifecycle builds."""

from __future__ import annotations

import uuid

import anyio
import anyio.to_thread
import pytest
from sqlalchemy import text

from portside import DatabaseSettings, Lifecycle

pytestmark = pytest.mark.anyio


async def test_pool_settings_reach_both_engines(postgresql_url: str) -> None:
    settings = DatabaseSettings(
        url=postgresql_url, pool_size=3, max_overflow=2, pool_timeout=4, pool_recycle=600
    )
    async with Lifecycle(settings) as lifecycle:
        database = lifecycle.database()
        assert database.kinds == ("sync", "async")
        for engine in (database.engine, database.async_engine.sync_engine):
            pool = engine.pool
            assert pool.size() == 3  # type: ignore[attr-defined]
            assert pool._max_overflow == 2  # type: ignore[attr-defined]
            assert pool._timeout == 4  # type: ignore[attr-defined]
            assert pool._recycle == 600
        assert database.engine.url.get_driver_name() == "psycopg"
        assert database.async_engine.url.get_driver_name() == "asyncpg"


async def test_sessions_talk_to_the_server(postgresql_url: str) -> None:
    async with (
        Lifecycle(DatabaseSettings(url=postgresql_url)) as lifecycle,
        lifecycle.async_session() as session,
    ):
        version = (await session.exec(text("SHOW server_version"))).scalar_one()
    assert version.split(".")[0].isdigit()


async def test_libpq_url_parameters_work_for_both_drivers(postgresql_url: str) -> None:
    url = f"{postgresql_url}?application_name=portside-libpq&sslmode=disable"
    async with Lifecycle(DatabaseSettings(url=url)) as lifecycle:
        async with lifecycle.async_session() as session:
            name = (await session.exec(text("SHOW application_name"))).scalar_one()

        def sync_name() -> str:
            with lifecycle.session() as session:
                return str(session.exec(text("SHOW application_name")).scalar_one())

        assert await anyio.to_thread.run_sync(sync_name) == name == "portside-libpq"


async def test_a_connection_killed_between_units_is_replaced(postgresql_url: str) -> None:
    """Pre-ping on checkout: the next unit gets a live connection, sync and async."""
    settings = DatabaseSettings(url=postgresql_url, pool_size=1, max_overflow=0)
    pid_query = text("SELECT pg_backend_pid()")
    async with (
        Lifecycle(settings) as lifecycle,
        Lifecycle(DatabaseSettings(url=postgresql_url)) as admin,
    ):

        async def kill(pid: int) -> None:
            async with admin.async_session() as session:
                await session.exec(text("SELECT pg_terminate_backend(:p)").bindparams(p=pid))

        async with lifecycle.async_session() as session:
            first = (await session.exec(pid_query)).scalar_one()
        await kill(first)
        async with lifecycle.async_session() as session:
            second = (await session.exec(pid_query)).scalar_one()
        assert second != first

        def sync_pid() -> int:
            with lifecycle.session() as session:
                return int(session.exec(pid_query).scalar_one())

        first = await anyio.to_thread.run_sync(sync_pid)
        await kill(first)
        assert await anyio.to_thread.run_sync(sync_pid) != first


async def test_units_returning_connections_to_a_full_pool_close_the_overflow_one(
    postgresql_url: str,
) -> None:
    """A unit whose connection the pool closes on its return (an overflow one) ends cleanly.

    asyncpg's close awaits: the unit returns such a connection in SQLAlchemy's
    greenlet, and one the pool keeps without it. Both, in one run, commit and leave
    nothing checked out.
    """
    name = f"portside-overflow-{uuid.uuid4().hex[:12]}"
    url = f"{postgresql_url}?application_name={name}"
    settings = DatabaseSettings(url=url, pool_size=1, max_overflow=1, engines="async")
    both_in = anyio.Event()
    entered: list[int] = []
    async with Lifecycle(settings) as lifecycle:

        async def unit() -> int:
            async with lifecycle.async_session() as session:
                pid = int((await session.exec(text("SELECT pg_backend_pid()"))).scalar_one())
                entered.append(pid)
                if len(entered) == 2:
                    both_in.set()
                await both_in.wait()  # both connections out: the second is an overflow one
            return pid

        pids: list[int] = []

        async def run() -> None:
            pids.append(await unit())

        async with anyio.create_task_group() as group:
            group.start_soon(run)
            group.start_soon(run)
        assert len(set(pids)) == 2
        pool = lifecycle.database().async_engine.sync_engine.pool
        assert pool.checkedout() == 0  # type: ignore[attr-defined]
        assert pool.checkedin() == 1  # type: ignore[attr-defined]  # the overflow one closed
        assert lifecycle.in_flight == 0
        async with lifecycle.async_session() as session:  # the pool still serves
            assert (await session.exec(text("SELECT 1"))).scalar_one() == 1
            # The overflow connection was closed for real: the server saw it go.
            query = text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :n")
            assert (await session.exec(query.bindparams(n=name))).scalar_one() == 1
