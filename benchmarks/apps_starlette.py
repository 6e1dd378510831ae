"""The Starlette contestants: portside, the seed's pattern, inline sessions, no database.

Starlette has no dependency injection, so the seed's pattern is ``async with`` in the
handler on a sessionmaker kept in lifespan state; the inline handler closes over its
sessionmaker instead (no state lookup).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import portside
import portside_starlette
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

Endpoint = Callable[[Request], Awaitable[JSONResponse]]
SessionOpener = Callable[[Request], Any]


def _one(item: Item | ItemRead) -> dict[str, Any]:
    return ItemRead.model_validate(item).model_dump()


def _many(items: Sequence[Item | ItemRead]) -> list[dict[str, Any]]:
    return [ItemRead.model_validate(item).model_dump() for item in items]


def _not_found(item_id: int) -> JSONResponse:
    return JSONResponse({"detail": f"no item {item_id}"}, status_code=404)


def _limit(request: Request) -> int:
    return int(request.query_params.get("limit", LIST_LIMIT))


def _routes(read: Endpoint, page: Endpoint, create: Endpoint) -> list[Route]:
    return [
        Route("/items/{item_id:int}", read, methods=["GET"]),
        Route("/items", page, methods=["GET"]),
        Route("/items", create, methods=["POST"]),
    ]


def portside_app(database: BenchDatabase) -> AppBundle:
    """portside-starlette as its README shows it: ``install``, ``async_session``.

    No readiness route: every contestant serves the same three routes and no other.
    """
    return _portside_app(database, transactions=False)


def portside_transactions_app(database: BenchDatabase) -> AppBundle:
    """:func:`portside_app` with every route using an after-commit callback and a deadline.

    Each route is wrapped in ``transaction(deadline=30)`` (the database is told at
    each transaction's start) and registers a no-op ``on_commit`` callback: what
    "Transactions to build on" costs when used.
    """
    return _portside_app(database, transactions=True)


def _after_commit() -> None:
    pass


def _portside_app(database: BenchDatabase, *, transactions: bool) -> AppBundle:
    async def session_of(request: Request) -> AsyncSession:
        session = await portside_starlette.async_session(request)
        if transactions:
            portside.on_commit(session, _after_commit)
        return session

    async def read_item(request: Request) -> JSONResponse:
        item_id: int = request.path_params["item_id"]
        session = await session_of(request)
        item = await queries.read_item(session, item_id)
        if item is None:
            return _not_found(item_id)
        return JSONResponse(_one(item))

    async def list_items(request: Request) -> JSONResponse:
        session = await session_of(request)
        return JSONResponse(_many(await queries.list_items(session, _limit(request))))

    async def create_item(request: Request) -> JSONResponse:
        data = ItemCreate.model_validate_json(await request.body())
        session = await session_of(request)
        item = await queries.add_item(session, data)
        return JSONResponse(_one(item), status_code=201)

    endpoints: list[Any] = [read_item, list_items, create_item]
    if transactions:
        with_deadline = portside_starlette.transaction(deadline=30.0)
        endpoints = [with_deadline(endpoint) for endpoint in endpoints]
    app = Starlette(routes=_routes(*endpoints))
    portside_starlette.install(app, database.settings, readiness_path=None)

    def engine(_state: dict[str, Any]) -> AsyncEngine:
        return portside_starlette.get_lifecycle(app).database().async_engine

    return AppBundle(app, engine)


def _manual_app(
    database: BenchDatabase, maker_of: Callable[[Request], async_sessionmaker[AsyncSession]]
) -> tuple[list[Route], Callable[[Starlette], Any]]:
    """Routes opening ``async with maker() as session`` and the lifespan feeding them."""

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[dict[str, Any]]:
        engine = database.create_engine()
        maker = async_sessionmaker(engine, class_=AsyncSession, expire_on_commit=False)
        try:
            yield {"engine": engine, "sessionmaker": maker}
        finally:
            await engine.dispose()

    async def read_item(request: Request) -> JSONResponse:
        item_id: int = request.path_params["item_id"]
        async with maker_of(request)() as session:
            item = await queries.read_item(session, item_id)
        if item is None:
            return _not_found(item_id)
        return JSONResponse(_one(item))

    async def list_items(request: Request) -> JSONResponse:
        async with maker_of(request)() as session:
            items = await queries.list_items(session, _limit(request))
        return JSONResponse(_many(items))

    async def create_item(request: Request) -> JSONResponse:
        data = ItemCreate.model_validate_json(await request.body())
        async with maker_of(request)() as session:
            item = await queries.add_item(session, data)
            await session.commit()
        return JSONResponse(_one(item), status_code=201)

    return _routes(read_item, list_items, create_item), lifespan


def handwritten_app(database: BenchDatabase) -> AppBundle:
    """The seed's pattern: engine in the lifespan (state), ``async with`` in the handler."""
    routes, lifespan = _manual_app(database, lambda request: request.state.sessionmaker)
    return AppBundle(Starlette(routes=routes, lifespan=lifespan), lambda state: state["engine"])


def inline_app(database: BenchDatabase) -> AppBundle:
    """The least glue: handlers close over the sessionmaker (no state lookup)."""
    makers: list[async_sessionmaker[AsyncSession]] = []
    routes, lifespan = _manual_app(database, lambda _request: makers[0])

    @asynccontextmanager
    async def capture(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        async with lifespan(app) as state:
            makers.append(state["sessionmaker"])
            try:
                yield state
            finally:
                makers.clear()

    return AppBundle(Starlette(routes=routes, lifespan=capture), lambda state: state["engine"])


def floor_app(_database: BenchDatabase) -> AppBundle:
    """No database: the same routes and models answering computed JSON."""

    async def read_item(request: Request) -> JSONResponse:
        return JSONResponse(_one(floor_item(request.path_params["item_id"])))

    async def list_items(request: Request) -> JSONResponse:
        return JSONResponse(_many(floor_list(_limit(request))))

    async def create_item(request: Request) -> JSONResponse:
        data = ItemCreate.model_validate_json(await request.body())
        return JSONResponse(_one(floor_created(data)), status_code=201)

    return AppBundle(Starlette(routes=_routes(read_item, list_items, create_item)))
