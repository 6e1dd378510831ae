"""The httpx clients: the API httpx users know, the app's lifecycle found, a test session.

``portside_async_client`` / ``portside_sync_client`` run the app inside the test's
transaction; ``open_async_client`` / ``open_sync_client`` run it plainly. Apps here
mix sync and async endpoints: both kinds share the test's one connection, so what
one writes the other reads (and on SQLite, both can write).
"""

from __future__ import annotations

import threading
from pathlib import Path

import anyio
import pytest
from fastapi import FastAPI, Form, UploadFile
from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert
from sqlmodel import select

import portside_fastapi
from portside import DatabaseSettings
from portside_fastapi import AsyncSessionDep, SessionDep
from portside_testing import (
    AsyncClientFactory,
    ConnectionLeakError,
    SyncClientFactory,
    open_async_client,
    open_sync_client,
)
from tests.testing_kit.test_client import APPS, held

metadata = MetaData()
words = Table(
    "testing_kit_http_word",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("body", String(100), nullable=False),
)
COUNT = select(func.count()).select_from(words)


@pytest.fixture
def portside_metadata() -> MetaData:
    return metadata


def mixed_app(settings: DatabaseSettings) -> FastAPI:
    app = FastAPI()
    portside_fastapi.install(app, settings)

    @app.post("/async", status_code=201)
    async def write_async(session: AsyncSessionDep, body: str = Form()) -> int:
        await session.exec(insert(words).values(body=body))
        return int(await session.scalar(COUNT) or 0)

    @app.post("/sync", status_code=201)
    def write_sync(session: SessionDep, body: str = Form()) -> int:
        assert threading.current_thread() is not threading.main_thread()
        session.exec(insert(words).values(body=body))
        return int(session.scalar(COUNT) or 0)

    @app.get("/async")
    async def read_async(session: AsyncSessionDep) -> list[str]:
        return list(await session.exec(select(words.c.body).order_by(words.c.id)))

    @app.get("/sync")
    def read_sync(session: SessionDep) -> list[str]:
        return list(session.exec(select(words.c.body).order_by(words.c.id)))

    @app.post("/upload")
    async def upload(file: UploadFile) -> dict[str, str]:
        return {"name": file.filename or "", "body": (await file.read()).decode()}

    return app


@pytest.mark.anyio
async def test_async_client_mixed_endpoints_share_the_tests_transaction(
    portside_async_client: AsyncClientFactory, portside_settings: DatabaseSettings
) -> None:
    async with portside_async_client(mixed_app(portside_settings)) as client:
        assert (await client.post("/async", data={"body": "a"})).json() == 1
        assert (await client.get("/sync")).json() == ["a"]  # a sync read sees an async write
        with anyio.fail_after(10):  # on SQLite, used to wait for the busy timeout, then 503
            response = await client.post("/sync", data={"body": "s"})
        assert response.status_code == 201, response.text
        assert (await client.get("/async")).json() == ["a", "s"]
        session = await client.session()
        assert await session.scalar(COUNT) == 2
        await session.exec(insert(words).values(body="t"))
        await session.commit()
        assert (await client.get("/sync")).json() == ["a", "s", "t"]
        uploaded = await client.post("/upload", files={"file": ("a.txt", b"hi")})
        assert uploaded.json() == {"name": "a.txt", "body": "hi"}
        assert uploaded.headers["content-type"] == "application/json"


@pytest.mark.anyio
async def test_and_the_next_test_starts_empty(
    portside_async_client: AsyncClientFactory, portside_settings: DatabaseSettings
) -> None:
    async with portside_async_client(mixed_app(portside_settings)) as client:
        assert (await client.get("/sync")).json() == []
        assert (await client.get("/async")).json() == []


def test_sync_client_mixed_endpoints_and_a_session_held_throughout(
    portside_sync_client: SyncClientFactory, portside_settings: DatabaseSettings
) -> None:
    with portside_sync_client(mixed_app(portside_settings)) as client:
        db = client.session()
        assert db.scalar(COUNT) == 0
        assert client.post("/sync", data={"body": "s"}).status_code == 201
        assert client.post("/async", data={"body": "a"}).json() == 2
        assert db.exec(select(words.c.body).order_by(words.c.id)).all() == ["s", "a"]
        db.exec(insert(words).values(body="t"))  # the test's transaction stays open...
        assert client.get("/async").json() == ["s", "a", "t"]  # ...and the app goes on
        db.commit()


def test_the_sync_client_rolls_back_too(
    portside_sync_client: SyncClientFactory, portside_settings: DatabaseSettings
) -> None:
    with portside_sync_client(mixed_app(portside_settings)) as client:
        assert client.get("/sync").json() == []


# -- without the plugin's transaction: every framework's lifecycle is found -------------


@pytest.fixture(params=list(APPS))
def framework(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.mark.anyio
async def test_the_async_client_finds_the_apps_lifecycle(framework: str, tmp_path: Path) -> None:
    build, get_lifecycle = APPS[framework]
    app = build(DatabaseSettings(url=f"sqlite:///{tmp_path / 'c.db'}"))
    async with open_async_client(app) as client:
        assert client.lifecycle is get_lifecycle(app)
        await client.lifecycle.database().create_all(client_metadata())
        assert (await client.get("/count")).json() == 0
        with pytest.raises(LookupError, match="runs outside one"):
            await client.session()


def test_the_sync_client_finds_the_apps_lifecycle_and_checks_for_leaks(
    framework: str, tmp_path: Path
) -> None:
    build, get_lifecycle = APPS[framework]
    app = build(DatabaseSettings(url=f"sqlite:///{tmp_path / 'c.db'}"))
    try:
        with (
            pytest.raises(ConnectionLeakError, match="1 connection"),
            open_sync_client(app) as client,
        ):
            assert client.lifecycle is get_lifecycle(app)
            client.portal.call(client.lifecycle.database().create_all, client_metadata())
            assert client.get("/count").json() == 0
            assert client.get("/leak").status_code in {200, 204}
    finally:
        for connection in held:
            anyio.run(_close, connection)
        held.clear()


async def _close(connection: object) -> None:
    await connection.invalidate()  # type: ignore[attr-defined]


def client_metadata() -> MetaData:
    from tests.testing_kit.test_client import metadata as client_tables

    return client_tables
