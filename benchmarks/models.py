"""The one table every contestant shares, its seed rows and what a correct answer is.

``Item`` is a SQLModel table (so portside's and the seed pattern's SQLModel sessions
and plain SQLAlchemy sessions all map it); ``ItemCreate`` and ``ItemRead`` are the
request and response models every app uses. Handlers query only through
``session.get`` and ``session.scalars``, which SQLModel and SQLAlchemy sessions
share, so every contestant of a framework runs the very same handler body.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Table
from sqlmodel import Field, SQLModel

#: Rows seeded before a run; ``GET /items/{id}`` asks for ids in 1..SEED_ROWS.
SEED_ROWS = 1_000
#: ``GET /items?limit=`` value every list request uses.
LIST_LIMIT = 20
#: The body of every ``POST /items``.
NEW_ITEM = {"name": "new item", "price": 9.75}
#: The benchmark's table (not "item", so it never clashes with test tables).
TABLE = "bench_item"
#: The id the no-database floors answer a POST with.
FLOOR_NEW_ID = SEED_ROWS + 1


class ItemBase(SQLModel):
    """Fields a client sends and receives."""

    name: str
    price: float


class Item(ItemBase, table=True):
    """The benchmark's table, :data:`TABLE`."""

    __tablename__ = TABLE

    id: int | None = Field(default=None, primary_key=True)


class ItemCreate(ItemBase):
    """Request body of ``POST /items``."""


class ItemRead(ItemBase):
    """Response model of every route."""

    id: int


def item_table() -> Table:
    """The SQLAlchemy ``Table`` behind :class:`Item`."""
    return SQLModel.metadata.tables[TABLE]


def seed_name(item_id: int) -> str:
    """The name seed row ``item_id`` holds."""
    return f"item {item_id}"


def seed_price(item_id: int) -> float:
    """The price seed row ``item_id`` holds (exact in binary, so JSON round-trips it)."""
    return item_id * 0.25


def seed_rows() -> list[dict[str, Any]]:
    """Every seed row, for one bulk insert."""
    return [
        {"id": i, "name": seed_name(i), "price": seed_price(i)} for i in range(1, SEED_ROWS + 1)
    ]


def expected_item(item_id: int) -> dict[str, Any]:
    """The JSON object ``GET /items/{item_id}`` must answer."""
    return {"id": item_id, "name": seed_name(item_id), "price": seed_price(item_id)}


def floor_item(item_id: int) -> ItemRead:
    """What the no-database floors answer ``GET /items/{item_id}`` with (same JSON)."""
    return ItemRead(id=item_id, name=seed_name(item_id), price=seed_price(item_id))


def floor_list(limit: int) -> list[ItemRead]:
    """What the no-database floors answer ``GET /items?limit=`` with."""
    return [floor_item(i) for i in range(1, limit + 1)]


def floor_created(data: ItemCreate) -> ItemRead:
    """What the no-database floors answer ``POST /items`` with."""
    return ItemRead(id=FLOOR_NEW_ID, name=data.name, price=data.price)
