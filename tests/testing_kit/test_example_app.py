"""The kit on the example app, for FastAPI, Litestar and Starlette, SQLite and PostgreSQL.

Tests in a module run in order: the first commits through the API, the second
must find the tables empty again. No dependency overrides anywhere: the app's own
lifespan joins the test's transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import anyio.to_thread
import pytest
from restaurants import fastapi_app, litestar_app, starlette_app
from restaurants.models import MenuItem, Restaurant
from sqlalchemy import func
from sqlmodel import select

from portside import DatabaseSettings, Lifecycle
from portside_testing import ClientFactory

from .conftest import committed_rows

# A test here checks that the one before it left nothing behind, so they must run in
# order in one process: under xdist, `--dist loadscope` (pyproject's addopts) keeps a
# module in one worker.
pytestmark = pytest.mark.anyio

FACTORIES: dict[str, Callable[..., Any]] = {
    "fastapi": fastapi_app.create_app,
    "litestar": litestar_app.create_app,
    "starlette": starlette_app.create_app,
}
SAKURA = {"name": "Sakura", "cuisine": "japanese", "rating": 4.7}
SOLE_WITH_MENU = {
    "name": "Trattoria Sole",
    "cuisine": "italian",
    "menu": [{"name": "Margherita", "price_cents": 1150}, {"name": "Tiramisu", "price_cents": 650}],
}
# Tests that committed rows, by framework and database: the next test checks they ran.
COMMITTED: set[str] = set()


@pytest.fixture(params=list(FACTORIES))
def app(request: pytest.FixtureRequest, portside_settings: DatabaseSettings) -> Any:
    """The example app built on the test database (the factory takes settings)."""
    return FACTORIES[request.param](portside_settings, seed=False)


async def count(lifecycle: Lifecycle, model: type[Any]) -> int:
    async with lifecycle.async_session(writes=False) as session:
        return (await session.exec(select(func.count()).select_from(model))).one()


async def test_commits_through_the_api(
    app: Any, portside_client: ClientFactory, portside_settings: DatabaseSettings, request: Any
) -> None:
    async with portside_client(app) as client:
        created = await client.post("/restaurants", json=SAKURA)
        assert created.status == 201, created.text
        with_menu = await client.post("/restaurants/with-menu", json=SOLE_WITH_MENU)
        assert with_menu.status == 201, with_menu.text
        renamed = await client.patch(f"/restaurants/{created.json()['id']}", json={"rating": 5})
        assert renamed.json()["rating"] == 5

        listed = (await client.get("/restaurants", params={"limit": 10})).json()
        assert [r["name"] for r in listed] == ["Sakura", "Trattoria Sole"]
        assert await count(client.lifecycle, Restaurant) == 2
        assert await count(client.lifecycle, MenuItem) == 2
        # Committed as far as the app can tell, yet nothing is committed for real.
        committed = await anyio.to_thread.run_sync(committed_rows, portside_settings, Restaurant)
        assert committed == 0
    COMMITTED.add(request.node.callspec.id)


async def test_the_next_test_sees_empty_tables(
    app: Any, portside_client: ClientFactory, portside_settings: DatabaseSettings, request: Any
) -> None:
    assert request.node.callspec.id in COMMITTED, "test_commits_through_the_api runs first"
    async with portside_client(app) as client:
        assert (await client.get("/restaurants")).json() == []
        assert await count(client.lifecycle, Restaurant) == 0
        assert await count(client.lifecycle, MenuItem) == 0
    assert await anyio.to_thread.run_sync(committed_rows, portside_settings, MenuItem) == 0


async def test_a_conflict_rolls_back_only_its_own_savepoint(
    app: Any, portside_client: ClientFactory
) -> None:
    twice = {**SOLE_WITH_MENU, "menu": [SOLE_WITH_MENU["menu"][0]] * 2}  # type: ignore[index]
    async with portside_client(app) as client:
        assert (await client.post("/restaurants", json=SAKURA)).status == 201
        conflict = await client.post("/restaurants/with-menu", json=twice)
        assert conflict.status == 409, conflict.text
        # The request's savepoint is gone, the outer transaction and earlier work are not.
        names = [r["name"] for r in (await client.get("/restaurants")).json()]
        assert names == ["Sakura"]
        assert (await client.post("/restaurants/with-menu", json=SOLE_WITH_MENU)).status == 201
        assert await count(client.lifecycle, MenuItem) == 2


async def test_the_test_arranges_data_on_the_apps_own_connection(
    app: Any, portside_client: ClientFactory
) -> None:
    async with portside_client(app) as client:
        async with client.lifecycle.async_session() as session:
            session.add(Restaurant(name="El Fogón", cuisine="mexican", rating=4.2))
        listed = (await client.get("/restaurants")).json()
        assert [r["name"] for r in listed] == ["El Fogón"]
        assert (await client.delete(f"/restaurants/{listed[0]['id']}")).status in {200, 204}
        assert await count(client.lifecycle, Restaurant) == 0


async def test_two_clients_in_one_test_each_roll_back(
    app: Any, portside_client: ClientFactory
) -> None:
    async with portside_client(app) as client:
        assert (await client.post("/restaurants", json=SAKURA)).status == 201
    async with portside_client(app) as client:  # the same app, started again
        assert (await client.get("/restaurants")).json() == []
