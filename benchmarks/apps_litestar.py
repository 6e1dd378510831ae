"""The Litestar contestants: portside, the seed's pattern, inline sessions, no database.

Annotations are evaluated at definition time here (no ``from __future__ import
annotations``): handlers are built inside functions, with the session type each
contestant's provider hands out. Litestar checks a dependency's type, so each
contestant annotates the class it really receives.
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from litestar import Litestar, get, post
from litestar.datastructures import State
from litestar.di import NamedDependency, Provide
from litestar.exceptions import NotFoundException
from litestar.params import Body, FromPath, FromQuery
from litestar.types import ControllerRouterHandler
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

import portside_litestar
from benchmarks import queries
from benchmarks.contestant import AppBundle
from benchmarks.databases import BenchDatabase
from benchmarks.driver import as_asgi
from benchmarks.models import (
    LIST_LIMIT,
    ItemCreate,
    ItemRead,
    floor_created,
    floor_item,
    floor_list,
)
from portside_litestar import AsyncSessionDep, PortsidePlugin

# Litestar deprecates parameters inferred from a bare type: these say where each comes from.
ItemBody = Annotated[ItemCreate, Body()]


def _not_found(item_id: int) -> NotFoundException:
    return NotFoundException(f"no item {item_id}")


def _app(handlers: list[ControllerRouterHandler], **options: Any) -> Litestar:
    # No request logging or OpenAPI work on the hot path in any contestant.
    return Litestar(handlers, openapi_config=None, debug=False, **options)


def session_handlers(session_dep: Any, *, commit: bool) -> list[ControllerRouterHandler]:
    """Handlers taking ``db_session: session_dep``; ``commit``: they commit writes."""

    @get("/items/{item_id:int}")
    async def read_item(item_id: FromPath[int], db_session: session_dep) -> ItemRead:
        item = await queries.read_item(db_session, item_id)
        if item is None:
            raise _not_found(item_id)
        return ItemRead.model_validate(item)

    @get("/items")
    async def list_items(
        db_session: session_dep, limit: FromQuery[int] = LIST_LIMIT
    ) -> list[ItemRead]:
        return [ItemRead.model_validate(i) for i in await queries.list_items(db_session, limit)]

    @post("/items")
    async def create_item(data: ItemBody, db_session: session_dep) -> ItemRead:
        item = await queries.add_item(db_session, data)
        if commit:
            await db_session.commit()
        return ItemRead.model_validate(item)

    return [read_item, list_items, create_item]


def portside_app(database: BenchDatabase) -> AppBundle:
    """portside-litestar as its README shows it: ``PortsidePlugin``, provider ``db_session``."""
    app = _app(
        session_handlers(AsyncSessionDep, commit=False), plugins=[PortsidePlugin(database.settings)]
    )

    def engine(_state: dict[str, Any]) -> AsyncEngine:
        return portside_litestar.get_lifecycle(app).database().async_engine

    return AppBundle(as_asgi(app), engine)


def handwritten_app(database: BenchDatabase) -> AppBundle:
    """The seed's pattern: engine built in a lifespan, a generator provider per request."""

    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        engine = database.create_engine()
        app.state.engine = engine
        app.state.sessionmaker = async_sessionmaker(
            engine, class_=AsyncSession, expire_on_commit=False
        )
        try:
            yield
        finally:
            await engine.dispose()

    async def provide_session(state: State) -> AsyncIterator[AsyncSession]:
        async with state.sessionmaker() as session:
            yield session

    app = _app(
        session_handlers(NamedDependency[AsyncSession], commit=True),
        lifespan=[lifespan],
        dependencies={"db_session": Provide(provide_session)},
    )
    return AppBundle(as_asgi(app), lambda _state: app.state.engine)


def inline_app(database: BenchDatabase) -> AppBundle:
    """The least glue: handlers open their session from a sessionmaker they close over."""
    makers: list[async_sessionmaker[AsyncSession]] = []
    engines: list[AsyncEngine] = []

    @asynccontextmanager
    async def lifespan(_app: Litestar) -> AsyncIterator[None]:
        engines.append(database.create_engine())
        makers.append(async_sessionmaker(engines[0], class_=AsyncSession, expire_on_commit=False))
        try:
            yield
        finally:
            makers.clear()
            await engines.pop().dispose()

    @get("/items/{item_id:int}")
    async def read_item(item_id: FromPath[int]) -> ItemRead:
        async with makers[0]() as session:
            item = await queries.read_item(session, item_id)
        if item is None:
            raise _not_found(item_id)
        return ItemRead.model_validate(item)

    @get("/items")
    async def list_items(limit: FromQuery[int] = LIST_LIMIT) -> list[ItemRead]:
        async with makers[0]() as session:
            return [ItemRead.model_validate(i) for i in await queries.list_items(session, limit)]

    @post("/items")
    async def create_item(data: ItemBody) -> ItemRead:
        async with makers[0]() as session:
            item = await queries.add_item(session, data)
            await session.commit()
        return ItemRead.model_validate(item)

    app = _app([read_item, list_items, create_item], lifespan=[lifespan])
    return AppBundle(as_asgi(app), lambda _state: engines[0])


def floor_app(_database: BenchDatabase) -> AppBundle:
    """No database: the same routes and models answering computed JSON."""

    @get("/items/{item_id:int}")
    async def read_item(item_id: FromPath[int]) -> ItemRead:
        return floor_item(item_id)

    @get("/items")
    async def list_items(limit: FromQuery[int] = LIST_LIMIT) -> list[ItemRead]:
        return floor_list(limit)

    @post("/items")
    async def create_item(data: ItemBody) -> ItemRead:
        return floor_created(data)

    return AppBundle(as_asgi(_app([read_item, list_items, create_item])))
