"""The example's domain: restaurants and their menu items.

Following SQLModel's idiom, each resource has a table model (``table=True``) and
separate schemas for what a client sends (``...Create``, ``...Update``) and gets
back (``...Public``). Table models skip validation; the schemas carry the rules, so
a bad request is rejected (422) before it reaches the database.
"""

from __future__ import annotations

from sqlalchemy import UniqueConstraint
from sqlmodel import Field, SQLModel

__all__ = [
    "MenuItem",
    "MenuItemCreate",
    "MenuItemPublic",
    "Page",
    "Restaurant",
    "RestaurantCreate",
    "RestaurantPublic",
    "RestaurantUpdate",
    "RestaurantWithMenu",
    "RestaurantWithMenuCreate",
]


class RestaurantBase(SQLModel):
    """The fields a client may set on a restaurant."""

    name: str = Field(min_length=1, max_length=100, index=True)
    cuisine: str = Field(min_length=1, max_length=50)
    rating: float = Field(default=0, ge=0, le=5)


class Restaurant(RestaurantBase, table=True):
    """A restaurant row."""

    id: int | None = Field(default=None, primary_key=True)


class RestaurantCreate(RestaurantBase):
    """Body of ``POST /restaurants``."""


class RestaurantUpdate(SQLModel):
    """Body of ``PATCH /restaurants/{id}``: omitted (or null) fields stay unchanged."""

    name: str | None = Field(default=None, min_length=1, max_length=100)
    cuisine: str | None = Field(default=None, min_length=1, max_length=50)
    rating: float | None = Field(default=None, ge=0, le=5)


class RestaurantPublic(RestaurantBase):
    """A restaurant as the API returns it."""

    id: int


class MenuItemBase(SQLModel):
    """The fields a client may set on a menu item."""

    name: str = Field(min_length=1, max_length=100)
    price_cents: int = Field(ge=0, le=10_000_000)


class MenuItem(MenuItemBase, table=True):
    """A menu item row, its name unique on its restaurant's menu.

    Deleting its restaurant deletes it (``ON DELETE CASCADE``).
    """

    __table_args__ = (UniqueConstraint("restaurant_id", "name"),)

    id: int | None = Field(default=None, primary_key=True)
    restaurant_id: int = Field(foreign_key="restaurant.id", ondelete="CASCADE", index=True)


class MenuItemCreate(MenuItemBase):
    """One menu item in the body of ``POST /restaurants/with-menu``."""


class MenuItemPublic(MenuItemBase):
    """A menu item as the API returns it."""

    id: int
    restaurant_id: int


class RestaurantWithMenuCreate(RestaurantCreate):
    """Body of ``POST /restaurants/with-menu``: a restaurant and its first menu items."""

    menu: list[MenuItemCreate] = Field(min_length=1)


class RestaurantWithMenu(RestaurantPublic):
    """A restaurant with the menu items created along with it."""

    menu: list[MenuItemPublic]


class Page(SQLModel):
    """Pagination query parameters: ``?offset=0&limit=20``."""

    offset: int = Field(default=0, ge=0)
    limit: int = Field(default=20, ge=1, le=100)
