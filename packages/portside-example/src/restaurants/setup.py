"""What the example does at startup, shared by its three apps.

The example creates its tables when it starts and, if asked, adds a few sample
rows to an empty database. This is the example's own choice, made in each app's
lifespan, which portside runs with the started lifecycle: portside never creates
tables by itself (a real application runs migrations, e.g. Alembic, before it
starts).
"""

from __future__ import annotations

import os

from sqlalchemy import func, text
from sqlmodel import SQLModel, select

from portside import DatabaseSettings, Lifecycle
from restaurants.models import MenuItem, Restaurant

__all__ = [
    "DEFAULT_URL",
    "SEED_ENV",
    "database_settings",
    "prepare_database",
    "seed_enabled",
]

#: The database used when ``DATABASE_URL`` and ``DATABASE_ASYNC_URL`` are both unset.
DEFAULT_URL = "sqlite:///restaurants.db"
#: Environment variable asking for sample rows in an empty database (``true``/``false``).
SEED_ENV = "RESTAURANTS_SEED"

# Advisory lock key serializing table creation across workers (any fixed number).
_LOCK = 7_311_004

_SAMPLES = {
    ("Trattoria Sole", "italian", 4.5): [("Margherita", 1150), ("Tiramisu", 650)],
    ("Sakura", "japanese", 4.7): [("Salmon nigiri", 900), ("Miso soup", 400)],
    ("El Fogón", "mexican", 4.2): [("Tacos al pastor", 1050)],
}


def database_settings() -> DatabaseSettings:
    """``DATABASE_*`` from the environment; ``restaurants.db`` here when no URL is set."""
    settings = DatabaseSettings()
    if settings.model_fields_set.isdisjoint({"url", "async_url"}):
        settings = DatabaseSettings(url=DEFAULT_URL)
    return settings


def seed_enabled() -> bool:
    """Whether ``RESTAURANTS_SEED`` asks for sample rows (off unless set)."""
    return os.environ.get(SEED_ENV, "").strip().lower() in {"1", "true", "yes", "on"}


async def prepare_database(lifecycle: Lifecycle, *, seed: bool) -> None:
    """Create missing tables, then with ``seed`` fill an empty database with samples."""
    database = lifecycle.database()
    if database.async_engine.dialect.name == "postgresql":
        # Several workers start at once: one creates the tables, the others then find
        # them. The lock must be taken in the transaction that creates them.
        async with database.async_engine.begin() as connection:
            await connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _LOCK})
            await connection.run_sync(SQLModel.metadata.create_all)
    else:
        await database.create_all(SQLModel.metadata)
    if not seed:
        return
    # One unit of work of its own: committed at the end of the block, or rolled back.
    async with lifecycle.async_session() as session:
        if (await session.exec(select(func.count()).select_from(Restaurant))).one():
            return
        for (name, cuisine, rating), menu in _SAMPLES.items():
            restaurant = Restaurant(name=name, cuisine=cuisine, rating=rating)
            session.add(restaurant)
            await session.flush()  # assigns restaurant.id
            assert restaurant.id is not None
            session.add_all(
                MenuItem(name=item, price_cents=price, restaurant_id=restaurant.id)
                for item, price in menu
            )
