"""The tables the conformance scenarios read and write.

They live in their own SQLAlchemy registry and :data:`metadata`, not in
``SQLModel.metadata``: creating or dropping them never touches an application's
own tables, and an application's ``SQLModel.metadata.create_all()`` never creates
them. Table names carry a ``conformance_`` prefix for the same reason.
"""

from __future__ import annotations

from sqlalchemy import Column, ForeignKey, Integer, MetaData
from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel

__all__ = [
    "Child",
    "ConformanceModel",
    "Item",
    "conformance_registry",
    "metadata",
]

#: The registry (and so the metadata) of the conformance tables only.
conformance_registry = registry(metadata=MetaData())
#: Create or drop the conformance tables with ``metadata.create_all(connection)``.
metadata = conformance_registry.metadata


class ConformanceModel(SQLModel, registry=conformance_registry):
    """Abstract base binding the conformance tables to :data:`metadata`."""


class Item(ConformanceModel, table=True):
    """A named row; ``name`` is unique so duplicate writes fail loudly."""

    __tablename__ = "conformance_item"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, max_length=200)


class Child(ConformanceModel, table=True):
    """A row whose parent must exist, checked only at COMMIT.

    The foreign key is ``DEFERRABLE INITIALLY DEFERRED`` (PostgreSQL, and SQLite
    with ``foreign_keys=ON``, which portside sets): adding a child of a missing
    parent flushes fine and fails at commit time, the case an integration must
    answer with a 5xx instead of the 2xx the handler chose.
    """

    __tablename__ = "conformance_child"

    id: int | None = Field(default=None, primary_key=True)
    parent_id: int = Field(
        sa_column=Column(
            Integer,
            ForeignKey("conformance_item.id", deferrable=True, initially="DEFERRED"),
            nullable=False,
        )
    )
