"""Units of work inside the test kit's outer transaction: everything commits, nothing stays."""

from __future__ import annotations

import anyio
import anyio.to_thread
import pytest
from sqlalchemy import func, insert, select

from portside import Lifecycle
from portside.urls import is_sqlite_memory
from portside_testing.outer_transaction import OuterTransaction

from .conftest import SettingsFactory, metadata, notes

pytestmark = pytest.mark.anyio


async def count(lifecycle: Lifecycle) -> int:
    async with lifecycle.async_session(writes=False) as session:
        return int((await session.exec(select(func.count()).select_from(notes))).scalar_one())


async def test_committed_work_is_rolled_back_with_the_outer_transaction(
    make_settings: SettingsFactory,
) -> None:
    settings = make_settings()
    if is_sqlite_memory(settings.sync_url_object):
        pytest.skip("an in-memory database does not outlive its lifecycle: nothing to leak")
    async with Lifecycle(settings) as setup:
        engine = setup.database().async_engine
        async with engine.begin() as connection:
            await connection.run_sync(metadata.drop_all)
            await connection.run_sync(metadata.create_all)

    with OuterTransaction() as outer:
        async with Lifecycle(settings) as lifecycle:
            assert outer.lifecycles == [lifecycle]
            async with lifecycle.async_session() as session:
                await session.exec(insert(notes).values(body="committed in the test"))
            with pytest.raises(RuntimeError):
                async with lifecycle.async_session() as session:
                    await session.exec(insert(notes).values(body="rolled back"))
                    raise RuntimeError("only this unit's savepoint rolls back")
            assert await count(lifecycle) == 1  # visible inside the test

            def sync_side() -> int:
                with lifecycle.session() as session:
                    return int(session.exec(select(func.count()).select_from(notes)).scalar_one())

            # Sync sessions run on the async engine's outer connection: one transaction.
            assert await anyio.to_thread.run_sync(sync_side) == 1

    async with Lifecycle(settings) as after:
        assert await count(after) == 0


async def test_nested_savepoints_inside_a_unit(make_settings: SettingsFactory) -> None:
    with OuterTransaction():
        async with Lifecycle(make_settings()) as lifecycle:
            engine = lifecycle.database().async_engine
            async with engine.begin() as connection:
                await connection.run_sync(metadata.create_all)
            async with lifecycle.async_session() as session:
                await session.exec(insert(notes).values(body="outer"))
                nested = await session.begin_nested()
                await session.exec(insert(notes).values(body="inner, undone"))
                await nested.rollback()
            async with lifecycle.async_session() as session:
                bodies = (await session.exec(select(notes.c.body))).scalars().all()
    assert bodies == ["outer"]
