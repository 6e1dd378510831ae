"""What is specific to portside-litestar and not covered by the conformance suite."""

from __future__ import annotations

import re
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from litestar import Litestar, Request, Response, get, post
from litestar.datastructures import State
from litestar.testing import TestClient
from sqlmodel import col, func, select

import portside_litestar
from portside import DatabaseSettings, Lifecycle, LifecycleStateError
from portside_litestar import AsyncSessionDep, PortsidePlugin, SessionDep, get_lifecycle
from portside_litestar import provide_session as provide
from portside_testing.asgi import AppRunner
from portside_testing.conformance.models import Item, metadata

pytestmark = pytest.mark.anyio


def sqlite(tmp_path: Path, name: str = "app") -> DatabaseSettings:
    return DatabaseSettings(url=f"sqlite:///{tmp_path / name}.db")


async def create_tables(lifecycle: Lifecycle, name: str | None = None) -> None:
    engine = lifecycle.database(name).async_
    assert engine is not None
    async with engine.engine.begin() as connection:
        await connection.run_sync(metadata.create_all)


async def names(lifecycle: Lifecycle, database: str | None = None) -> list[str]:
    async with lifecycle.async_session(database) as session:
        return list(await session.exec(select(Item.name).order_by(col(Item.name))))


@post("/items")
async def add_item(db_session: AsyncSessionDep) -> dict[str, str]:
    db_session.add(Item(name="async"))
    return {"name": "async"}


@post("/items/sync", sync_to_thread=True)
def add_item_sync(sync_db_session: SessionDep) -> dict[str, str]:
    sync_db_session.add(Item(name="sync"))
    return {"name": "sync"}


async def test_custom_dependency_keys(tmp_path: Path) -> None:
    @post("/a")
    async def with_async(session: AsyncSessionDep) -> None:
        session.add(Item(name="a"))

    @post("/s", sync_to_thread=True)
    def with_sync(sync_session: SessionDep) -> None:
        sync_session.add(Item(name="s"))

    plugin = PortsidePlugin(
        sqlite(tmp_path),
        session_dependency_key="session",
        sync_session_dependency_key="sync_session",
    )
    app = Litestar([with_async, with_sync], plugins=[plugin])
    assert "db_session" not in app.dependencies
    assert "sync_db_session" not in app.dependencies
    async with AppRunner(app) as runner:
        lifecycle = get_lifecycle(app)
        await create_tables(lifecycle)
        assert (await runner.request("POST", "/a")).status == 201
        assert (await runner.request("POST", "/s")).status == 201
        assert await names(lifecycle) == ["a", "s"]


async def test_disabled_keys_and_custom_health_path(tmp_path: Path) -> None:
    plugin = PortsidePlugin(
        sqlite(tmp_path),
        session_dependency_key=None,
        sync_session_dependency_key=None,
        health_path="/ready",
    )
    app = Litestar([], plugins=[plugin])
    assert "db_session" not in app.dependencies
    assert "sync_db_session" not in app.dependencies
    async with AppRunner(app) as runner:
        ready = await runner.request("GET", "/ready")
        assert ready.status == 200
        assert ready.json()["databases"]["default"]["up"] is True
        assert (await runner.request("GET", "/health")).status == 404
    app = Litestar([], plugins=[PortsidePlugin(sqlite(tmp_path), health_path=None)])
    assert all(route.path != "/health" for route in app.routes)


async def test_app_dependencies_win_over_the_plugin(tmp_path: Path) -> None:
    # An app-level provider under the same key is the user's choice; the plugin keeps out.
    app = Litestar(
        [add_item],
        plugins=[PortsidePlugin({"main": sqlite(tmp_path), "other": sqlite(tmp_path, "o")})],
        dependencies={"db_session": provide("other")},
    )
    async with AppRunner(app) as runner:
        lifecycle = get_lifecycle(app)
        await create_tables(lifecycle, "main")
        await create_tables(lifecycle, "other")
        assert (await runner.request("POST", "/items")).status == 201
        assert await names(lifecycle, "main") == []
        assert await names(lifecycle, "other") == ["async"]


async def test_named_database_providers(tmp_path: Path) -> None:
    @post("/both")
    async def both(
        db_session: AsyncSessionDep, analytics_session: AsyncSessionDep
    ) -> dict[str, bool]:
        db_session.add(Item(name="main"))
        analytics_session.add(Item(name="event"))
        return {"same": db_session is analytics_session}

    @get("/analytics/sync", sync_to_thread=True)
    def count_sync(sync_analytics: SessionDep) -> dict[str, int]:
        return {"count": sync_analytics.exec(select(func.count()).select_from(Item)).one()}

    app = Litestar(
        [both, count_sync],
        plugins=[PortsidePlugin({"main": sqlite(tmp_path), "analytics": sqlite(tmp_path, "a")})],
        dependencies={
            "analytics_session": provide("analytics"),
            "sync_analytics": provide("analytics", sync=True),
        },
    )
    async with AppRunner(app) as runner:
        lifecycle = get_lifecycle(app)
        await create_tables(lifecycle, "main")
        await create_tables(lifecycle, "analytics")
        response = await runner.request("POST", "/both")
        assert (response.status, response.json()) == (201, {"same": False})
        assert await names(lifecycle, "main") == ["main"]
        assert await names(lifecycle, "analytics") == ["event"]
        assert (await runner.request("GET", "/analytics/sync")).json() == {"count": 1}


async def test_the_apps_own_lifespan_and_hooks_can_use_the_databases(tmp_path: Path) -> None:
    seen: list[str] = []

    @asynccontextmanager
    async def own_lifespan(app: Litestar) -> AsyncIterator[None]:
        # Entered after the plugin's lifespan and left before it: the engines are up.
        await create_tables(get_lifecycle(app))
        seen.append("lifespan started")
        yield
        async with get_lifecycle(app).async_session() as session:
            session.add(Item(name=f"written at shutdown {len(seen)}"))
        seen.append("lifespan stopped")

    async def on_startup(app: Litestar) -> None:
        seen.append("on_startup")
        async with get_lifecycle(app).async_session() as session:
            session.add(Item(name=f"written at startup {len(seen)}"))

    app = Litestar(
        [add_item, add_item_sync],
        plugins=[PortsidePlugin(sqlite(tmp_path))],
        lifespan=[own_lifespan],
        on_startup=[on_startup],
    )
    async with AppRunner(app) as runner:
        assert (await runner.request("POST", "/items")).status == 201
        assert (await runner.request("POST", "/items/sync")).status == 201
        assert await names(get_lifecycle(app)) == ["async", "sync", "written at startup 2"]
    assert seen == ["lifespan started", "on_startup", "lifespan stopped"]
    with pytest.raises(LifecycleStateError, match="PortsidePlugin"):
        get_lifecycle(app)
    async with AppRunner(app) as runner:  # a second start gets a new lifecycle
        assert "written at shutdown 2" in await names(get_lifecycle(app))


async def test_database_errors_that_are_not_outages_keep_litestars_answer(
    tmp_path: Path,
) -> None:
    @post("/duplicate")
    async def duplicate(db_session: AsyncSessionDep) -> None:
        db_session.add_all([Item(name="twice"), Item(name="twice")])
        await db_session.flush()  # IntegrityError: a bug, not an outage (500, not 503)

    def on_500(request: Request[Any, Any, State], exc: Exception) -> Response[dict[str, str]]:
        return Response({"handled": type(exc).__name__}, status_code=500)

    plain = Litestar([duplicate], plugins=[PortsidePlugin(sqlite(tmp_path))])
    custom = Litestar(
        [duplicate],
        plugins=[PortsidePlugin(sqlite(tmp_path))],
        exception_handlers={500: on_500},
    )
    async with AppRunner(plain) as runner:
        await create_tables(get_lifecycle(plain))
        response = await runner.request("POST", "/duplicate")
        assert (response.status, response.json()["detail"]) == (500, "Internal Server Error")
    async with AppRunner(custom) as runner:
        response = await runner.request("POST", "/duplicate")
        assert (response.status, response.json()) == (500, {"handled": "IntegrityError"})


def test_the_docstring_example_works(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    doc = portside_litestar.__doc__
    assert doc is not None
    example = re.search(r"::\n\n(.*?)\n\n(?=\S)", doc, re.DOTALL)
    assert example is not None
    monkeypatch.chdir(tmp_path)
    # Litestar resolves annotations through the handler's module: give it a real one.
    module = ModuleType("portside_litestar_example")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    exec(compile(re.sub(r"(?m)^    ", "", example.group(1)), "example", "exec"), vars(module))

    app, visit = module.app, module.Visit
    with TestClient(app) as client:
        with get_lifecycle(app).database().sync.engine.begin() as connection:  # type: ignore[union-attr]
            visit.__table__.create(connection)
        assert client.post("/visits").json() == {"id": 1}
        assert client.post("/visits").json() == {"id": 2}
