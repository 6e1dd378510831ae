"""``open_client`` without the plugin's transaction: it still finds the app's lifecycle.

Outside ``portside_client`` (no :class:`~portside_testing.OuterTransaction`), the client
records the lifecycles the app starts through a binding of its own, so
``client.lifecycle`` is the app's lifecycle on every framework, wherever the
integration keeps it, and the leak check has something to check. Nothing here rolls
back: each test has a SQLite file of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from litestar import Litestar, get
from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert, select
from sqlalchemy.ext.asyncio import AsyncConnection
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import portside_fastapi
import portside_litestar
import portside_starlette
from portside import DatabaseSettings, Lifecycle, current_binding
from portside_litestar import AsyncSessionDep, LifecycleDep, PortsidePlugin
from portside_testing import ConnectionLeakError, open_client

pytestmark = pytest.mark.anyio

metadata = MetaData()
notes = Table(
    "testing_kit_client_note",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("body", String(100), nullable=False),
)
COUNT = select(func.count()).select_from(notes)
#: Connections the leaking endpoints opened; closed by each test.
held: list[AsyncConnection] = []


# -- one app per framework: /count reads through the request's session, /leak leaks ----


def fastapi_app(settings: DatabaseSettings) -> FastAPI:
    app = FastAPI()
    portside_fastapi.install(app, settings)

    @app.get("/count")
    async def count(session: portside_fastapi.AsyncSessionDep) -> int:
        return int(await session.scalar(COUNT) or 0)

    @app.get("/leak")
    async def leak(lifecycle: portside_fastapi.LifecycleDep) -> None:
        held.append(await lifecycle.database().async_engine.connect())

    return app


@get("/count")
async def litestar_count(db_session: AsyncSessionDep) -> int:
    return int(await db_session.scalar(COUNT) or 0)


@get("/leak")
async def litestar_leak(lifecycle: LifecycleDep) -> None:
    held.append(await lifecycle.database().async_engine.connect())


def litestar_app(settings: DatabaseSettings) -> Litestar:
    return Litestar([litestar_count, litestar_leak], plugins=[PortsidePlugin(settings)])


async def starlette_count(request: Request) -> JSONResponse:
    session = await portside_starlette.async_session(request)
    return JSONResponse(int(await session.scalar(COUNT) or 0))


async def starlette_leak(request: Request) -> JSONResponse:
    lifecycle = portside_starlette.get_lifecycle(request)
    held.append(await lifecycle.database().async_engine.connect())
    return JSONResponse(None)


def starlette_app(settings: DatabaseSettings) -> Starlette:
    app = Starlette(routes=[Route("/count", starlette_count), Route("/leak", starlette_leak)])
    portside_starlette.install(app, settings)
    return app


APPS: dict[str, tuple[Callable[[DatabaseSettings], Any], Callable[[Any], Lifecycle]]] = {
    "fastapi": (fastapi_app, portside_fastapi.get_lifecycle),
    "litestar": (litestar_app, portside_litestar.get_lifecycle),
    "starlette": (starlette_app, portside_starlette.get_lifecycle),
}


@pytest.fixture(params=list(APPS))
def framework(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def settings(tmp_path: Path) -> DatabaseSettings:
    return DatabaseSettings(url=f"sqlite:///{tmp_path / 'client.db'}")


@pytest.fixture(autouse=True)
async def close_what_was_leaked() -> Any:
    yield
    for connection in reversed(held):
        await connection.invalidate()  # its pool is gone: close the driver connection
        await connection.close()
    held.clear()


async def test_the_client_finds_the_apps_lifecycle(
    framework: str, settings: DatabaseSettings
) -> None:
    build, get_lifecycle = APPS[framework]
    app = build(settings)
    assert current_binding() is None  # no test transaction: a plain client
    async with open_client(app) as client:
        assert client.lifecycle is get_lifecycle(app)
        assert client.lifecycle.binding is not None  # the client's recorder
        await client.lifecycle.database().create_all(metadata)
        async with client.lifecycle.async_session() as session:
            await session.exec(insert(notes).values(body="arranged by the test"))
        assert (await client.get("/count")).json() == 1
    assert not client.lifecycle.running
    async with open_client(app) as again:  # started again: a new lifecycle, found too
        assert again.lifecycle is not client.lifecycle
        assert (await again.get("/count")).json() == 1  # committed for real: no rollback


async def test_the_client_checks_for_leaks(framework: str, settings: DatabaseSettings) -> None:
    app = APPS[framework][0](settings)
    with pytest.raises(ConnectionLeakError, match=r"async engine: 1 connection\(s\) checked out"):
        async with open_client(app) as client:
            assert (await client.get("/leak")).status in {200, 204}
    assert len(held) == 1
