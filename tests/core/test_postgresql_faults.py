"""What the core does when the PostgreSQL server misbehaves under it."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import anyio
import pytest
from sqlalchemy import text

from portside import DatabaseSettings, Lifecycle

pytestmark = pytest.mark.anyio


@pytest.fixture
async def scratch_database(postgresql_url: str) -> AsyncIterator[str]:
    """A throwaway database on the test server; the URL to reach it."""
    from sqlalchemy.engine import make_url

    name = f"portside_scratch_{uuid.uuid4().hex[:12]}"
    admin = DatabaseSettings(url=postgresql_url, engines="async")
    async with Lifecycle(admin) as lifecycle:
        engine = lifecycle.database().async_engine
        async with engine.connect() as connection:
            autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
            await autocommit.exec_driver_sql(f'CREATE DATABASE "{name}"')
        try:
            yield make_url(postgresql_url).set(database=name).render_as_string(hide_password=False)
        finally:
            async with engine.connect() as connection:
                autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
                await autocommit.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def drop_database(postgresql_url: str, name: str) -> None:
    async with Lifecycle(DatabaseSettings(url=postgresql_url, engines="async")) as admin:
        engine = admin.database().async_engine
        async with engine.connect() as connection:
            autocommit = await connection.execution_options(isolation_level="AUTOCOMMIT")
            await autocommit.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')


async def test_ping_reports_a_database_that_went_away(
    scratch_database: str, postgresql_url: str
) -> None:
    from sqlalchemy.engine import make_url

    settings = DatabaseSettings(url=scratch_database, connect_timeout=2)
    async with Lifecycle({"reports": settings}) as lifecycle:
        assert (await lifecycle.ping())["reports"].up
        await drop_database(postgresql_url, str(make_url(scratch_database).database))
        status = (await lifecycle.ping())["reports"]
    assert not status.up
    assert status.latency is None
    assert status.error is not None
    assert "does not exist" in status.error or "terminat" in status.error


async def test_a_connection_killed_mid_unit_is_invalidated_not_reused(
    postgresql_url: str,
) -> None:
    settings = DatabaseSettings(url=postgresql_url, pool_size=1, max_overflow=0)
    async with Lifecycle(settings) as lifecycle:
        with pytest.raises(Exception, match=r"terminat|closed|connection"):
            async with lifecycle.async_session() as session:
                pid = (await session.exec(text("SELECT pg_backend_pid()"))).scalar_one()
                # pool_size=1: the killing connection comes from another lifecycle.
                async with (
                    Lifecycle(DatabaseSettings(url=postgresql_url)) as other,
                    other.async_session() as admin,
                ):
                    await admin.exec(text("SELECT pg_terminate_backend(:pid)").bindparams(pid=pid))
                await anyio.sleep(0.1)
                await session.exec(text("SELECT 1"))
        pools = lifecycle.database().pool_status()
        assert pools["async"].checked_out == 0
        async with lifecycle.async_session() as session:
            assert (await session.exec(text("SELECT 1"))).scalar_one() == 1
