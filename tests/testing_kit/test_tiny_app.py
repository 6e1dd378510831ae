"""A tiny Starlette app of the test's own: nested savepoints, sync sessions, own metadata.

``portside_metadata`` is overridden for this module, as a user with their own
``MetaData`` would: only this table is created for these tests.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, insert
from sqlmodel import select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import portside_starlette
from portside import DatabaseSettings
from portside_testing import ClientFactory

# A test here checks that the one before it left nothing behind, so they must run in
# order in one process: under xdist, `--dist loadscope` (pyproject's addopts) keeps a
# module in one worker.
pytestmark = pytest.mark.anyio

metadata = MetaData()
notes = Table(
    "testing_kit_note",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("body", String(100), nullable=False),
)
WROTE: set[str] = set()


@pytest.fixture
def portside_metadata() -> MetaData:
    return metadata


async def nested(request: Request) -> JSONResponse:
    """One row kept, one undone by a savepoint of the request's own."""
    session = await portside_starlette.async_session(request)
    await session.exec(insert(notes).values(body="kept"))
    savepoint = await session.begin_nested()
    await session.exec(insert(notes).values(body="undone"))
    await savepoint.rollback()
    return JSONResponse({}, status_code=201)


async def read(request: Request) -> JSONResponse:
    session = await portside_starlette.async_session(request)
    return JSONResponse(list(await session.exec(select(notes.c.body))))


def write_sync(request: Request) -> JSONResponse:
    """A ``def`` endpoint (run in a worker thread) writing through the sync session."""
    session = portside_starlette.session_from_thread(request)
    session.exec(insert(notes).values(body="sync"))
    return JSONResponse({}, status_code=201)


def read_sync(request: Request) -> JSONResponse:
    session = portside_starlette.session_from_thread(request)
    return JSONResponse(list(session.exec(select(notes.c.body))))


async def boom(request: Request) -> JSONResponse:
    await portside_starlette.async_session(request)
    raise RuntimeError("boom")


def create_app(settings: DatabaseSettings) -> Starlette:
    app = Starlette(
        routes=[
            Route("/boom", boom),
            Route("/nested", nested, methods=["POST"]),
            Route("/notes", read),
            Route("/sync", write_sync, methods=["POST"]),
            Route("/sync", read_sync),
        ]
    )
    portside_starlette.install(app, settings)
    return app


async def test_savepoints_nest_inside_the_tests_transaction(
    portside_client: ClientFactory, portside_settings: DatabaseSettings, request: Any
) -> None:
    async with portside_client(create_app(portside_settings)) as client:
        assert (await client.post("/nested")).status == 201
        assert (await client.post("/nested")).status == 201
        assert (await client.get("/notes")).json() == ["kept", "kept"]
    WROTE.add(request.node.callspec.id)


async def test_sync_endpoints_are_isolated_too(
    portside_client: ClientFactory, portside_settings: DatabaseSettings, request: Any
) -> None:
    assert request.node.callspec.id in WROTE
    async with portside_client(create_app(portside_settings)) as client:
        assert (await client.get("/notes")).json() == []
        assert (await client.post("/sync")).status == 201
        assert (await client.get("/sync")).json() == ["sync"]


async def test_after_sync_writes_the_table_is_empty(
    portside_client: ClientFactory, portside_settings: DatabaseSettings
) -> None:
    async with portside_client(create_app(portside_settings)) as client:
        assert (await client.get("/sync")).json() == []
        assert (await client.get("/notes")).json() == []


async def test_app_exceptions_are_raised_unless_asked_otherwise(
    portside_client: ClientFactory, portside_settings: DatabaseSettings
) -> None:
    app = create_app(portside_settings)
    async with portside_client(app) as client:
        with pytest.raises(RuntimeError, match="boom"):
            await client.get("/boom")
    async with portside_client(app, raise_app_exceptions=False) as client:
        assert (await client.get("/boom")).status == 500
