"""The restaurants API on Litestar, with portside-litestar.

``PortsidePlugin`` gives the app its engines (built at startup, disposed at
shutdown), a unit of work per request that commits before the response starts (or
rolls back on an error status), the request's session as ``db_session`` and
``/health``. The app's own lifespan, given to the plugin, receives the running
lifecycle and prepares the database. No handler commits.

Serve it with ``uv run restaurants --framework litestar``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from litestar import Controller, Litestar, Request, Response, delete, get, patch, post
from litestar.di import NamedDependency, Provide
from litestar.exceptions import NotFoundException, ValidationException
from litestar.params import FromPath, JSONBody, QueryParameter
from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from portside import DatabaseSettings, Lifecycle
from portside_litestar import AsyncSessionDep, PortsidePlugin
from restaurants.models import (
    MenuItem,
    MenuItemPublic,
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


async def get_restaurant(db_session: AsyncSessionDep, restaurant_id: FromPath[int]) -> Restaurant:
    """The restaurant named by the path, or 404."""
    restaurant = await db_session.get(Restaurant, restaurant_id)
    if restaurant is None:
        raise NotFoundException(f"No restaurant with id {restaurant_id}.")
    return restaurant


RestaurantDep = NamedDependency[Restaurant]


class RestaurantController(Controller):
    """The ``/restaurants`` routes; ``restaurant`` is the path's restaurant (or 404)."""

    path = "/restaurants"
    tags = ("restaurants",)
    dependencies = {"restaurant": Provide(get_restaurant)}  # noqa: RUF012  # Litestar's style

    @get()
    async def list_restaurants(
        self,
        db_session: AsyncSessionDep,
        offset: Annotated[int, QueryParameter(ge=0)] = 0,
        limit: Annotated[int, QueryParameter(ge=1, le=100)] = 20,
    ) -> list[RestaurantPublic]:
        query = select(Restaurant).order_by(col(Restaurant.id)).offset(offset).limit(limit)
        return [RestaurantPublic.model_validate(r) for r in await db_session.exec(query)]

    @get("/{restaurant_id:int}")
    async def read_restaurant(self, restaurant: RestaurantDep) -> RestaurantPublic:
        return RestaurantPublic.model_validate(restaurant)

    @post()
    async def create_restaurant(
        self, db_session: AsyncSessionDep, data: JSONBody[RestaurantCreate]
    ) -> RestaurantPublic:
        restaurant = Restaurant.model_validate(data)
        db_session.add(restaurant)
        await db_session.flush()  # assigns the id; the commit happens before the 201 is sent
        return RestaurantPublic.model_validate(restaurant)

    @patch("/{restaurant_id:int}")
    async def update_restaurant(
        self, restaurant: RestaurantDep, data: JSONBody[RestaurantUpdate]
    ) -> RestaurantPublic:
        restaurant.sqlmodel_update(data.model_dump(exclude_unset=True, exclude_none=True))
        return RestaurantPublic.model_validate(restaurant)

    @delete("/{restaurant_id:int}")
    async def delete_restaurant(
        self, db_session: AsyncSessionDep, restaurant: RestaurantDep
    ) -> None:
        await db_session.delete(restaurant)  # its menu items go too (ON DELETE CASCADE)

    @get("/{restaurant_id:int}/menu")
    async def read_menu(
        self, db_session: AsyncSessionDep, restaurant: RestaurantDep
    ) -> list[MenuItemPublic]:
        query = select(MenuItem).where(MenuItem.restaurant_id == restaurant.id)
        rows = await db_session.exec(query.order_by(col(MenuItem.id)))
        return [MenuItemPublic.model_validate(item) for item in rows]

    @post("/with-menu")
    async def create_with_menu(
        self, db_session: AsyncSessionDep, data: JSONBody[RestaurantWithMenuCreate]
    ) -> RestaurantWithMenu:
        """Both tables in one unit of work: all rows are committed, or none."""
        restaurant = Restaurant.model_validate(data)
        db_session.add(restaurant)
        await db_session.flush()  # the restaurant's id, for its items' foreign key
        menu = [
            MenuItem.model_validate(i, update={"restaurant_id": restaurant.id}) for i in data.menu
        ]
        db_session.add_all(menu)
        await db_session.flush()
        return RestaurantWithMenu.model_validate(restaurant, update={"menu": menu})


def unprocessable(request: Request[Any, Any, Any], exc: ValidationException) -> Response[Any]:
    """Answer invalid input with 422 like the FastAPI and Starlette versions (Litestar: 400)."""
    body = {"status_code": 422, "detail": exc.detail, "extra": exc.extra}
    return Response(body, status_code=422)


def conflict(request: Request[Any, Any, Any], exc: IntegrityError) -> Response[Any]:
    """A write that breaks a constraint: 409, and the unit of work rolls back."""
    return Response({"status_code": 409, "detail": CONFLICT}, status_code=409)


def create_app(database: DatabaseSettings | None = None, *, seed: bool | None = None) -> Litestar:
    """The app on ``database`` (default: ``DATABASE_*``, else ``restaurants.db``).

    At startup it creates its tables and, with ``seed`` (default: ``RESTAURANTS_SEED``),
    adds sample rows to an empty database.
    """
    add_samples = seed_enabled() if seed is None else seed

    @asynccontextmanager
    async def lifespan(app: Litestar, lifecycle: Lifecycle) -> AsyncIterator[None]:
        await prepare_database(lifecycle, seed=add_samples)  # the databases answer here
        yield

    return Litestar(
        [RestaurantController],
        plugins=[PortsidePlugin(database or database_settings(), lifespan=lifespan)],
        exception_handlers={ValidationException: unprocessable, IntegrityError: conflict},
    )
