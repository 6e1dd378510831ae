"""The restaurants API on Starlette, with portside-starlette.

``portside_starlette.install`` gives the app its engines (built at startup, disposed
at shutdown), a unit of work per request that commits before the response starts
(or rolls back on an error status), and ``/health``. The app's own lifespan
receives the running lifecycle and prepares the database;
``await portside_starlette.async_session(request)`` gives an endpoint its request's
session. No endpoint commits. Starlette validates nothing itself: the SQLModel
schemas do, and a ``ValidationError`` handler answers 422.

Serve it with ``uv run restaurants --framework starlette``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from pydantic import ValidationError
from pydantic_core import to_jsonable_python
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import portside_starlette
from portside import AsyncSession, DatabaseSettings, Lifecycle
from portside_starlette import async_session
from restaurants.models import (
    MenuItem,
    MenuItemPublic,
    Page,
    Restaurant,
    RestaurantCreate,
    RestaurantPublic,
    RestaurantUpdate,
    RestaurantWithMenu,
    RestaurantWithMenuCreate,
)
from restaurants.setup import database_settings, prepare_database, seed_enabled

__all__ = ["create_app"]

#: The 409 answer to a write that breaks a constraint; nothing of it is committed.
CONFLICT = "Conflicting data (a dish listed twice?); nothing was saved."


def as_json(content: Any, status_code: int = 200) -> JSONResponse:
    """``content`` (schemas, lists of them) as a JSON response."""
    return JSONResponse(to_jsonable_python(content), status_code=status_code)


async def get_restaurant(request: Request, session: AsyncSession) -> Restaurant:
    """The restaurant named by the path, or 404."""
    restaurant_id = request.path_params["restaurant_id"]
    restaurant = await session.get(Restaurant, restaurant_id)
    if restaurant is None:
        raise HTTPException(404, f"No restaurant with id {restaurant_id}.")
    return restaurant


async def list_restaurants(request: Request) -> JSONResponse:
    page = Page.model_validate(dict(request.query_params))
    session = await async_session(request)
    query = select(Restaurant).order_by(col(Restaurant.id)).offset(page.offset).limit(page.limit)
    return as_json([RestaurantPublic.model_validate(r) for r in await session.exec(query)])


async def read_restaurant(request: Request) -> JSONResponse:
    restaurant = await get_restaurant(request, await async_session(request))
    return as_json(RestaurantPublic.model_validate(restaurant))


async def create_restaurant(request: Request) -> JSONResponse:
    data = RestaurantCreate.model_validate_json(await request.body())
    session = await async_session(request)
    restaurant = Restaurant.model_validate(data)
    session.add(restaurant)
    await session.flush()  # assigns the id; the commit happens before the 201 is sent
    return as_json(RestaurantPublic.model_validate(restaurant), status_code=201)


async def update_restaurant(request: Request) -> JSONResponse:
    data = RestaurantUpdate.model_validate_json(await request.body())
    restaurant = await get_restaurant(request, await async_session(request))
    restaurant.sqlmodel_update(data.model_dump(exclude_unset=True, exclude_none=True))
    return as_json(RestaurantPublic.model_validate(restaurant))


async def delete_restaurant(request: Request) -> Response:
    session = await async_session(request)
    # Its menu items go too (ON DELETE CASCADE).
    await session.delete(await get_restaurant(request, session))
    return Response(status_code=204)


async def read_menu(request: Request) -> JSONResponse:
    session = await async_session(request)
    restaurant = await get_restaurant(request, session)
    query = select(MenuItem).where(MenuItem.restaurant_id == restaurant.id)
    rows = await session.exec(query.order_by(col(MenuItem.id)))
    return as_json([MenuItemPublic.model_validate(item) for item in rows])


async def create_with_menu(request: Request) -> JSONResponse:
    """Both tables in one unit of work: all rows are committed, or none."""
    data = RestaurantWithMenuCreate.model_validate_json(await request.body())
    session = await async_session(request)
    restaurant = Restaurant.model_validate(data)
    session.add(restaurant)
    await session.flush()  # the restaurant's id, for its items' foreign key
    menu = [MenuItem.model_validate(i, update={"restaurant_id": restaurant.id}) for i in data.menu]
    session.add_all(menu)
    await session.flush()
    return as_json(RestaurantWithMenu.model_validate(restaurant, update={"menu": menu}), 201)


async def json_error(request: Request, exc: Exception) -> JSONResponse:
    """Errors as JSON ``{"detail": ...}``, invalid input as 422."""
    match exc:
        case ValidationError():
            detail = exc.errors(include_url=False, include_context=False, include_input=False)
            return JSONResponse({"detail": detail}, status_code=422)
        case IntegrityError():  # the unit of work rolls back, as for any status >= 400
            return JSONResponse({"detail": CONFLICT}, status_code=409)
        case HTTPException():
            return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)
    raise exc


routes = [
    Route("/restaurants", list_restaurants),
    Route("/restaurants", create_restaurant, methods=["POST"]),
    Route("/restaurants/with-menu", create_with_menu, methods=["POST"]),
    Route("/restaurants/{restaurant_id:int}", read_restaurant),
    Route("/restaurants/{restaurant_id:int}", update_restaurant, methods=["PATCH"]),
    Route("/restaurants/{restaurant_id:int}", delete_restaurant, methods=["DELETE"]),
    Route("/restaurants/{restaurant_id:int}/menu", read_menu),
]


def create_app(database: DatabaseSettings | None = None, *, seed: bool | None = None) -> Starlette:
    """The app on ``database`` (default: ``DATABASE_*``, else ``restaurants.db``).

    At startup it creates its tables and, with ``seed`` (default: ``RESTAURANTS_SEED``),
    adds sample rows to an empty database.
    """
    add_samples = seed_enabled() if seed is None else seed

    @asynccontextmanager
    async def lifespan(app: Starlette, lifecycle: Lifecycle) -> AsyncIterator[None]:
        await prepare_database(lifecycle, seed=add_samples)  # the databases answer here
        yield

    app = Starlette(
        routes=routes,
        exception_handlers={
            ValidationError: json_error,
            IntegrityError: json_error,
            HTTPException: json_error,
        },
    )
    portside_starlette.install(app, database or database_settings(), lifespan=lifespan)
    return app
