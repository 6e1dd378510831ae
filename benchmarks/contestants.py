"""The roster: every contestant by name, plus the raw SQLAlchemy database floor.

App modules are imported only when a contestant from them is selected, so a run
without advanced-alchemy never imports it.
"""

from __future__ import annotations

import importlib
import os
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
from benchmarks.databases import REPLICA_URL_ENV, BenchDatabase
from benchmarks.driver import Call
from benchmarks.models import LIST_LIMIT, NEW_ITEM, ItemCreate

#: The contestant whose second, identical copy forms the A/A pair.
AA_REFERENCE = "fastapi-handwritten"
AA_COPY = "fastapi-handwritten-copy"
#: ``fastapi-handwritten`` with SQLAlchemy's pre-ping on every checkout.
PRE_PING = "fastapi-handwritten-preping"


def _lazy(module: str, function: str) -> Callable[[BenchDatabase], AppBundle]:
    def build(database: BenchDatabase) -> AppBundle:
        built: AppBundle = getattr(importlib.import_module(module), function)(database)
        return built

    return build


def _lazy_otel(module: str, function: str) -> Callable[[BenchDatabase], AppBundle]:
    def build(database: BenchDatabase) -> AppBundle:
        from benchmarks.telemetry import with_telemetry  # noqa: PLC0415 - imports the SDK

        return with_telemetry(_lazy(module, function))(database)

    return build


#: Contestants that run only when named: they install OpenTelemetry's SDK process-wide.
OPT_IN = ("starlette-portside-otel", "litestar-portside-otel")


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


def _on(
    build: Callable[[BenchDatabase], AppBundle],
    variant: Callable[[BenchDatabase], BenchDatabase],
) -> Callable[[BenchDatabase], AppBundle]:
    def build_variant(database: BenchDatabase) -> AppBundle:
        return build(variant(database))

    return build_variant


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
    # The seed's pool_pre_ping=True: the safety portside's defaults give, bought per checkout.
    contestants.append(
        asgi_contestant(
            PRE_PING,
            "fastapi",
            "handwritten",
            _on(_lazy("benchmarks.apps_fastapi", "handwritten_app"), BenchDatabase.with_pre_ping),
        )
    )
    for framework in ("litestar", "starlette"):
        name = f"{framework}-portside-otel"
        build = _lazy_otel(f"benchmarks.apps_{framework}", "portside_app")
        contestants.append(asgi_contestant(name, framework, "portside", build))
    if os.environ.get(REPLICA_URL_ENV):
        # The portside contestant with its reads routed to a replica: what routing costs.
        frameworks: tuple[Framework, ...] = ("fastapi", "litestar", "starlette")
        for framework in frameworks:
            build = _lazy(f"benchmarks.apps_{framework}", "portside_app")
            contestants += [
                asgi_contestant(
                    f"{framework}-portside-replicas",
                    framework,
                    "portside-replicas",
                    _on(build, BenchDatabase.with_replica),
                ),
                asgi_contestant(
                    f"{framework}-portside-on-replica",
                    framework,
                    "portside-on-replica",
                    _on(build, BenchDatabase.on_replica),
                ),
            ]
    contestants.append(Contestant("sqlalchemy-raw", "sqlalchemy", "raw", _RawStarter()))
    return contestants
