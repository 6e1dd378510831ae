"""The roster: every contestant by name, plus the raw SQLAlchemy database floor.

App modules are imported only when a contestant from them is selected, so a run
without advanced-alchemy never imports it.
"""

from __future__ import annotations

import importlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from benchmarks import queries
from benchmarks.contestant import (
    AppBundle,
    Contestant,
    Framework,
    Kind,
    Running,
    asgi_contestant,
    checked_out,
)
from benchmarks.databases import BenchDatabase
from benchmarks.driver import Call
from benchmarks.models import LIST_LIMIT, NEW_ITEM, ItemCreate

#: The contestant whose second, identical copy forms the A/A pair.
AA_REFERENCE = "fastapi-handwritten"
AA_COPY = "fastapi-handwritten-copy"


def _lazy(module: str, function: str) -> Callable[[BenchDatabase], AppBundle]:
    def build(database: BenchDatabase) -> AppBundle:
        built: AppBundle = getattr(importlib.import_module(module), function)(database)
        return built

    return build


class _RawRunning:
    """The three operations on a session each, no HTTP: the database floor."""

    def __init__(self, maker: async_sessionmaker[AsyncSession], engine: Any) -> None:
        self._maker = maker
        self._engine = engine
        self._new = ItemCreate.model_validate(NEW_ITEM)

    async def call(self, call: Call) -> tuple[int, Any]:
        if call.route == "get":
            async with self._maker() as session:
                item = await queries.read_item(session, call.item_id)
            return (404, None) if item is None else (200, item)
        if call.route == "list":
            async with self._maker() as session:
                return 200, await queries.list_items(session, LIST_LIMIT)
        async with self._maker() as session:
            item = await queries.add_item(session, self._new)
            await session.commit()
        return 201, item

    def checked_out(self) -> int | None:
        return checked_out(self._engine)


class _RawStarter:
    def prepare(self, database: BenchDatabase) -> None:
        pass

    @asynccontextmanager
    async def start(self, database: BenchDatabase) -> AsyncIterator[Running]:
        engine = database.create_engine()
        try:
            yield _RawRunning(async_sessionmaker(engine, expire_on_commit=False), engine)
        finally:
            await engine.dispose()


def roster() -> list[Contestant]:
    """Every contestant, in report order."""
    entries: list[tuple[str, Framework, Kind, str, str]] = []
    for framework in ("fastapi", "litestar", "starlette"):
        module = f"benchmarks.apps_{framework}"
        for kind in ("portside", "handwritten", "inline", "floor"):
            entries.append((f"{framework}-{kind}", framework, kind, module, f"{kind}_app"))
        if framework != "starlette":
            entries.append(
                (
                    f"{framework}-advanced-alchemy",
                    framework,
                    "advanced-alchemy",
                    "benchmarks.apps_advanced_alchemy",
                    f"{framework}_app",
                )
            )
    entries.append(
        (
            "starlette-portside-transactions",
            "starlette",
            "portside",
            "benchmarks.apps_starlette",
            "portside_transactions_app",
        )
    )
    entries.append(
        (AA_COPY, "fastapi", "handwritten", "benchmarks.apps_fastapi", "handwritten_app")
    )
    contestants = [
        asgi_contestant(name, framework, kind, _lazy(module, function))
        for name, framework, kind, module, function in entries
    ]
    contestants.append(Contestant("sqlalchemy-raw", "sqlalchemy", "raw", _RawStarter()))
    return contestants
