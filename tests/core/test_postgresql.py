"""PostgreSQL's defaults, read off the engines the lifecycle builds."""

from __future__ import annotations

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
