"""The kit without an app: a lifecycle and sessions on the test's transaction.

Async tests use ``portside_async_session``; a plain ``def`` test uses the sync
``portside_session`` directly (it runs outside the event loop's thread).
"""

from __future__ import annotations

import os
from typing import Any

import anyio.to_thread
import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert
from sqlmodel import select

from portside import AsyncSession, DatabaseSettings, Lifecycle, Session, current_binding
from portside_testing import OuterTransaction

from .conftest import committed_rows

metadata = MetaData()
notes = Table(
    "testing_kit_session_note",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("body", String(100), nullable=False),
)
# A test here checks that the one before it left nothing behind, so they must run in
# order in one process: under xdist, `--dist loadscope` (pyproject's addopts) keeps a
# module in one worker.
COMMITTED: set[str] = set()


@pytest.fixture
def portside_metadata() -> MetaData:
    return metadata


async def count_in_unit(lifecycle: Lifecycle) -> int:
    async with lifecycle.async_session() as session:
        return int((await session.exec(select(func.count()).select_from(notes))).one())


@pytest.mark.anyio
async def test_async_session_and_units_of_work_share_the_transaction(
    portside_async_session: AsyncSession,
    portside_lifecycle: Lifecycle,
    portside_transaction: OuterTransaction,
    portside_settings: DatabaseSettings,
    request: Any,
) -> None:
    assert current_binding() is portside_transaction
    assert portside_lifecycle.binding is portside_transaction
    await portside_async_session.exec(insert(notes).values(body="from the test"))
    await portside_async_session.commit()  # releases a savepoint only
    # Code under test opens its own unit of work: it sees the row, and adds one.
    assert await count_in_unit(portside_lifecycle) == 1
    async with portside_lifecycle.async_session() as session:
        await session.exec(insert(notes).values(body="from the code"))
    result = await portside_async_session.exec(select(func.count()).select_from(notes))
    assert result.one() == 2
    assert await anyio.to_thread.run_sync(committed_rows, portside_settings, notes) == 0
    COMMITTED.add(request.node.callspec.id)


@pytest.mark.anyio
async def test_the_next_async_test_starts_empty(
    portside_async_session: AsyncSession, request: Any
) -> None:
    assert request.node.callspec.id in COMMITTED
    result = await portside_async_session.exec(select(func.count()).select_from(notes))
    assert result.one() == 0


def test_sync_session_in_a_plain_test(portside_session: Session, request: Any) -> None:
    portside_session.exec(insert(notes).values(body="sync"))
    portside_session.commit()
    assert portside_session.exec(select(notes.c.body)).all() == ["sync"]
    COMMITTED.add(f"sync-{request.node.callspec.id}")


def test_the_next_sync_test_starts_empty(portside_session: Session, request: Any) -> None:
    assert f"sync-{request.node.callspec.id}" in COMMITTED
    assert portside_session.exec(select(func.count()).select_from(notes)).one() == 0


def test_database_env_points_at_the_test_database(
    portside_database_env: DatabaseSettings,
) -> None:
    assert os.environ["DATABASE_URL"] == portside_database_env.url
    assert os.environ["DATABASE_ASYNC_URL"] == portside_database_env.async_url
    assert DatabaseSettings().url == portside_database_env.url
