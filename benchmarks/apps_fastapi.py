"""The FastAPI contestants: portside, the seed's pattern, inline sessions, no database.

All four expose the same routes with the same request/response models and the same
handler bodies (:mod:`benchmarks.queries`); only how a handler gets its session
differs.
"""

# No ``from __future__ import annotations``: FastAPI reads the handlers' annotations at
# definition time, and they name dependency aliases local to each builder.

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Annotated, Any

from fastapi import Depends, FastAPI, HTTPException, Request
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

import portside_fastapi
from benchmarks import queries
from benchmarks.contestant import AppBundle
from benchmarks.databases import BenchDatabase
from benchmarks.models import (
    LIST_LIMIT,
    Item,
    ItemCreate,
    ItemRead,
    floor_created,
    floor_item,
    floor_list,
)
from portside_fastapi import AsyncSessionDep


def _not_found(item_id: int) -> HTTPException:
    return HTTPException(status_code=404, detail=f"no item {item_id}")


def portside_app(database: BenchDatabase) -> AppBundle:
    """portside-fastapi as its README shows it: ``install``, ``AsyncSessionDep``.

    No readiness route: every contestant serves the same three routes and no other.
    """
    app = FastAPI()
    portside_fastapi.install(app, database.settings, readiness_path=None)

    @app.get("/items/{item_id}", response_model=ItemRead)
    async def read_item(item_id: int, session: AsyncSessionDep) -> Item:
        item = await queries.read_item(session, item_id)
        if item is None:
            raise _not_found(item_id)
        return item

    @app.get("/items", response_model=list[ItemRead])
    async def list_items(session: AsyncSessionDep, limit: int = LIST_LIMIT) -> Sequence[Item]:
        return await queries.list_items(session, limit)

    @app.post("/items", response_model=ItemRead, status_code=201)
    async def create_item(data: ItemCreate, session: AsyncSessionDep) -> Item:
        return await queries.add_item(session, data)

    def engine(_state: dict[str, Any]) -> AsyncEngine:
        return portside_fastapi.get_lifecycle(app).database().async_engine

    return AppBundle(app, engine)


def handwritten_app(database: BenchDatabase) -> AppBundle:
    """The seed's pattern: engine built in the lifespan, a ``yield`` dependency per request.

    Handlers that write commit themselves; the dependency closes the session after
    the response (FastAPI runs a yield dependency's exit after sending).
    """

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        engine = database.create_engine()
        maker = async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)
        try:
            yield {"engine": engine, "sessionmaker": maker}
        finally:
            await engine.dispose()

    async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
        async with request.state.sessionmaker() as session:
            yield session

    SessionDep = Annotated[AsyncSession, Depends(get_session)]  # noqa: N806 - a type alias
    app = FastAPI(lifespan=lifespan)

    @app.get("/items/{item_id}", response_model=ItemRead)
    async def read_item(item_id: int, session: SessionDep) -> Item:
        item = await queries.read_item(session, item_id)
        if item is None:
            raise _not_found(item_id)
        return item

    @app.get("/items", response_model=list[ItemRead])
    async def list_items(session: SessionDep, limit: int = LIST_LIMIT) -> Sequence[Item]:
        return await queries.list_items(session, limit)

    @app.post("/items", response_model=ItemRead, status_code=201)
    async def create_item(data: ItemCreate, session: SessionDep) -> Item:
        item = await queries.add_item(session, data)
        await session.commit()
        return item

    return AppBundle(app, lambda state: state["engine"])


def inline_app(database: BenchDatabase) -> AppBundle:
    """The least glue: the handler opens its session from a sessionmaker it closes over."""
    makers: list[async_sessionmaker[AsyncSession]] = []

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        engine = database.create_engine()
        makers.append(async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False))
        try:
            yield {"engine": engine}
        finally:
            makers.clear()
            await engine.dispose()

    app = FastAPI(lifespan=lifespan)

    @app.get("/items/{item_id}", response_model=ItemRead)
    async def read_item(item_id: int) -> Item:
        async with makers[0]() as session:
            item = await queries.read_item(session, item_id)
        if item is None:
            raise _not_found(item_id)
        return item

    @app.get("/items", response_model=list[ItemRead])
    async def list_items(limit: int = LIST_LIMIT) -> Sequence[Item]:
        async with makers[0]() as session:
            return await queries.list_items(session, limit)

    @app.post("/items", response_model=ItemRead, status_code=201)
    async def create_item(data: ItemCreate) -> Item:
        async with makers[0]() as session:
            item = await queries.add_item(session, data)
            await session.commit()
        return item

    return AppBundle(app, lambda state: state["engine"])


def floor_app(_database: BenchDatabase) -> AppBundle:
    """No database: the same routes and models answering computed JSON."""
    app = FastAPI()

    @app.get("/items/{item_id}", response_model=ItemRead)
    async def read_item(item_id: int) -> ItemRead:
        return floor_item(item_id)

    @app.get("/items", response_model=list[ItemRead])
    async def list_items(limit: int = LIST_LIMIT) -> list[ItemRead]:
        return floor_list(limit)

    @app.post("/items", response_model=ItemRead, status_code=201)
    async def create_item(data: ItemCreate) -> ItemRead:
        return floor_created(data)

    return AppBundle(app)
