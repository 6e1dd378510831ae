"""The restaurants API on FastAPI, with portside-fastapi.

``portside_fastapi.install`` gives the app its engines (built at startup, disposed
at shutdown), a unit of work per request that commits before the response starts
(or rolls back on an error status), and ``/health``. The app's own lifespan
receives the running lifecycle and prepares the database; ``AsyncSessionDep``
hands a handler its request's session. No handler commits.

Serve it with ``uv run restaurants`` or ``uvicorn --factory restaurants.fastapi_app:create_app``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

import portside_fastapi
from portside import DatabaseSettings, Lifecycle
from portside_fastapi import AsyncSessionDep
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

router = APIRouter(prefix="/restaurants", tags=["restaurants"])


async def get_restaurant(restaurant_id: int, session: AsyncSessionDep) -> Restaurant:
    """The restaurant named by the path, or 404."""
    restaurant = await session.get(Restaurant, restaurant_id)
    if restaurant is None:
        raise HTTPException(404, f"No restaurant with id {restaurant_id}.")
    return restaurant


RestaurantDep = Annotated[Restaurant, Depends(get_restaurant)]


@router.get("", response_model=list[RestaurantPublic])
async def list_restaurants(
    session: AsyncSessionDep, page: Annotated[Page, Query()]
) -> Sequence[Restaurant]:
    query = select(Restaurant).order_by(col(Restaurant.id)).offset(page.offset).limit(page.limit)
    return (await session.exec(query)).all()


@router.get("/{restaurant_id}", response_model=RestaurantPublic)
async def read_restaurant(restaurant: RestaurantDep) -> Restaurant:
    return restaurant


@router.post("", status_code=201, response_model=RestaurantPublic)
async def create_restaurant(data: RestaurantCreate, session: AsyncSessionDep) -> Restaurant:
    restaurant = Restaurant.model_validate(data)
    session.add(restaurant)
    await session.flush()  # assigns the id; the commit happens before the 201 is sent
    return restaurant


@router.patch("/{restaurant_id}", response_model=RestaurantPublic)
async def update_restaurant(data: RestaurantUpdate, restaurant: RestaurantDep) -> Restaurant:
    restaurant.sqlmodel_update(data.model_dump(exclude_unset=True, exclude_none=True))
    return restaurant


@router.delete("/{restaurant_id}", status_code=204, response_model=None)
async def delete_restaurant(restaurant: RestaurantDep, session: AsyncSessionDep) -> None:
    await session.delete(restaurant)  # its menu items go too (ON DELETE CASCADE)


@router.get("/{restaurant_id}/menu", response_model=list[MenuItemPublic])
async def read_menu(restaurant: RestaurantDep, session: AsyncSessionDep) -> Sequence[MenuItem]:
    query = select(MenuItem).where(MenuItem.restaurant_id == restaurant.id)
    return (await session.exec(query.order_by(col(MenuItem.id)))).all()


@router.post("/with-menu", status_code=201)
async def create_with_menu(
    data: RestaurantWithMenuCreate, session: AsyncSessionDep
) -> RestaurantWithMenu:
    """Both tables in one unit of work: all rows are committed, or none."""
    restaurant = Restaurant.model_validate(data)
    session.add(restaurant)
    await session.flush()  # the restaurant's id, for its items' foreign key
    menu = [MenuItem.model_validate(i, update={"restaurant_id": restaurant.id}) for i in data.menu]
    session.add_all(menu)
    await session.flush()
    return RestaurantWithMenu.model_validate(restaurant, update={"menu": menu})


async def conflict(request: Request, exc: Exception) -> JSONResponse:
    """A write that breaks a constraint: 409, and the unit of work rolls back."""
    return JSONResponse({"detail": CONFLICT}, status_code=409)


def create_app(database: DatabaseSettings | None = None, *, seed: bool | None = None) -> FastAPI:
    """The app on ``database`` (default: ``DATABASE_*``, else ``restaurants.db``).

    At startup it creates its tables and, with ``seed`` (default: ``RESTAURANTS_SEED``),
    adds sample rows to an empty database.
    """
    add_samples = seed_enabled() if seed is None else seed

    @asynccontextmanager
    async def lifespan(app: FastAPI, lifecycle: Lifecycle) -> AsyncIterator[None]:
        await prepare_database(lifecycle, seed=add_samples)  # the databases answer here
        yield

    app = FastAPI(title="Restaurants (FastAPI + portside)")
    portside_fastapi.install(app, database or database_settings(), lifespan=lifespan)
    app.add_exception_handler(IntegrityError, conflict)
    app.include_router(router)
    return app
