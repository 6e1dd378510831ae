"""Capturing after-commit callbacks inside the test's transaction, which never commits."""

from __future__ import annotations

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, insert, select
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import portside
import portside_starlette
from portside import DatabaseSettings
from portside_testing import CapturedCallbacks, ClientFactory, capture_on_commit

pytestmark = pytest.mark.anyio

metadata = MetaData()
signups = Table(
    "testing_kit_signup",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("email", String(100), nullable=False),
)
SENT: list[str] = []


@pytest.fixture
def portside_metadata() -> MetaData:
    return metadata


async def send_welcome(email: str) -> None:
    SENT.append(email)


async def signup(request: Request) -> JSONResponse:
    email = (await request.json())["email"]
    session = await portside_starlette.async_session(request)
    await session.exec(insert(signups).values(email=email))
    portside.on_commit(session, lambda: send_welcome(email))
    status = 422 if email.startswith("bad") else 201
    return JSONResponse({"email": email}, status_code=status)


async def count(request: Request) -> JSONResponse:
    session = await portside_starlette.async_session(request)
    return JSONResponse(len((await session.exec(select(signups.c.id))).all()))


def create_app(settings: DatabaseSettings) -> Starlette:
    app = Starlette(routes=[Route("/signup", signup, methods=["POST"]), Route("/signups", count)])
    portside_starlette.install(app, settings)
    return app


async def test_the_fixture_captures_what_a_committed_request_registered(
    portside_client: ClientFactory,
    portside_settings: DatabaseSettings,
    portside_on_commit: CapturedCallbacks,
) -> None:
    SENT.clear()
    async with portside_client(create_app(portside_settings)) as client:
        assert (await client.post("/signup", json={"email": "a@example.com"})).status == 201
        assert (await client.post("/signup", json={"email": "bad@example.com"})).status == 422
        assert (await client.get("/signups")).json() == 1
    # Only the committed request's callback, even though nothing really committed.
    assert len(portside_on_commit) == 1
    assert SENT == []
    await portside_on_commit.run()
    assert SENT == ["a@example.com"]
    assert portside_on_commit == []


async def test_without_capture_the_callbacks_run_inside_the_tests_transaction(
    portside_client: ClientFactory, portside_settings: DatabaseSettings
) -> None:
    SENT.clear()
    async with portside_client(create_app(portside_settings)) as client:
        assert (await client.post("/signup", json={"email": "b@example.com"})).status == 201
    assert SENT == ["b@example.com"]


async def test_capture_on_commit_as_a_block(
    portside_client: ClientFactory, portside_settings: DatabaseSettings
) -> None:
    SENT.clear()
    async with portside_client(create_app(portside_settings)) as client:
        with capture_on_commit() as callbacks:
            assert (await client.post("/signup", json={"email": "c@example.com"})).status == 201
        assert (await client.post("/signup", json={"email": "d@example.com"})).status == 201
    assert SENT == ["d@example.com"]
    await callbacks.run()
    assert SENT == ["d@example.com", "c@example.com"]
