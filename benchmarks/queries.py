"""The three database operations, written once and called by every contestant.

Each takes any SQLAlchemy ``AsyncSession`` (portside's and SQLModel's are
subclasses), so every contestant runs exactly the same queries and only the
session glue around them differs.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession
from sqlmodel import col, select
from sqlmodel.ext.asyncio.session import AsyncSession as SQLModelAsyncSession

from benchmarks.models import Item, ItemCreate


async def read_item(session: AsyncSession, item_id: int) -> Item | None:
    """``GET /items/{item_id}``: one row by primary key."""
    return await session.get(Item, item_id)


async def list_items(session: AsyncSession, limit: int) -> Sequence[Item]:
    """``GET /items?limit=``: the first ``limit`` rows by id.

    SQLModel sessions (portside's, the seed's) use their ``exec``; SQLModel warns
    that ``execute``, which ``scalars`` calls, is deprecated on them. Plain
    SQLAlchemy sessions (advanced-alchemy, raw) use ``scalars``. Same SQL either way.
    """
    statement = select(Item).order_by(col(Item.id)).limit(limit)
    if isinstance(session, SQLModelAsyncSession):
        return (await session.exec(statement)).all()
    return (await session.scalars(statement)).all()


async def add_item(session: AsyncSession, data: ItemCreate) -> Item:
    """``POST /items``: insert and flush (the id is known; committing is the glue's job)."""
    item = Item(name=data.name, price=data.price)
    session.add(item)
    await session.flush()
    return item
