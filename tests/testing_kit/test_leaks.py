"""Leaks fail the test that caused them, with a message naming the database.

A small test file runs in its own pytest process (``pytester``), with the plugin
loaded from its entry point and its default database: a temporary SQLite file.
"""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

INNER_TESTS = """
import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

import portside_starlette

pytestmark = pytest.mark.anyio
held = []


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture(autouse=True)
async def close_what_was_leaked():
    yield
    for thing in reversed(held):
        if hasattr(thing, "invalidate"):
            await thing.invalidate()  # its pool is gone: close the driver connection
        await (thing.close() if hasattr(thing, "close") else thing.finish(commit=False))
    held.clear()


async def leak_connection(request):
    engine = portside_starlette.get_lifecycle(request).database().async_engine
    held.append(await engine.connect())
    return JSONResponse({})


async def leak_unit_of_work(request):
    unit = portside_starlette.get_lifecycle(request).unit_of_work()
    await unit.async_session()  # opened, never finished
    held.append(unit)
    return JSONResponse({})


async def fine(request):
    await portside_starlette.async_session(request)
    return JSONResponse({})


def create_app():  # settings from DATABASE_*, which portside_client points at the test db
    routes = [Route("/connection", leak_connection), Route("/unit", leak_unit_of_work)]
    app = Starlette(routes=[*routes, Route("/fine", fine)])
    portside_starlette.install(app)
    return app


async def test_leaks_a_connection(portside_client):
    async with portside_client(create_app()) as client:
        assert (await client.get("/connection")).status == 200


async def test_leaks_a_unit_of_work(portside_client):
    async with portside_client(create_app()) as client:
        assert (await client.get("/unit")).status == 200


async def test_leaks_from_its_own_lifecycle(portside_lifecycle):
    held.append(await portside_lifecycle.database().async_engine.connect())


async def test_gives_everything_back(portside_client):
    async with portside_client(create_app()) as client:
        assert (await client.get("/fine")).status == 200


async def test_mixes_the_client_with_session_fixtures(portside_client, portside_async_session):
    pass
"""


def test_leaks_fail_the_test_with_a_clear_message(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("PORTSIDE_TEST_DATABASE_URL", "DATABASE_URL", "DATABASE_ASYNC_URL"):
        monkeypatch.delenv(name, raising=False)
    # The leaked unit of work keeps the app's shutdown waiting for this long.
    monkeypatch.setenv("DATABASE_SHUTDOWN_TIMEOUT", "0.2")
    monkeypatch.setenv("COLUMNS", "300")  # untruncated summary lines
    pytester.makepyfile(test_inner=INNER_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-W", "error", "-ra")
    result.assert_outcomes(passed=1, failed=3, errors=1)
    result.stdout.fnmatch_lines(
        [
            "*portside: the test leaked database resources (checked when the client exited*",
            "*- database 'default' (sqlite+aiosqlite:///*/test.db), async engine: "
            "1 connection(s) checked out and never returned",
        ]
    )
    result.stdout.fnmatch_lines(["*- 1 unit(s) of work opened a session and never finished*"])
    result.stdout.fnmatch_lines(
        [
            "*portside: the test leaked database resources (checked at the end of the test*",
            "*- database 'default' (sqlite+aiosqlite:///*/test.db), async engine: "
            "1 connection(s) checked out and never returned",
        ]
    )
    result.stdout.fnmatch_lines(["*portside_client cannot be combined with portside_lifecycle*"])
    result.stdout.fnmatch_lines(
        [
            "FAILED test_inner.py::test_leaks_a_connection - *ConnectionLeakError*",
            "FAILED test_inner.py::test_leaks_a_unit_of_work - *ConnectionLeakError*",
            "FAILED test_inner.py::test_leaks_from_its_own_lifecycle - *ConnectionLeakError*",
        ],
        consecutive=False,
    )


LITESTAR_TESTS = """
import pytest
from litestar import Litestar, get

from portside_litestar import AsyncSessionDep, LifecycleDep, PortsidePlugin

pytestmark = pytest.mark.anyio
held = []


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture(autouse=True)
async def close_what_was_leaked():
    yield
    for connection in reversed(held):
        await connection.invalidate()  # its pool is gone: close the driver connection
        await connection.close()
    held.clear()


@get("/connection")
async def leak_connection(lifecycle: LifecycleDep) -> None:
    held.append(await lifecycle.database().async_engine.connect())


@get("/fine")
async def fine(db_session: AsyncSessionDep) -> None:
    await db_session.connection()


def create_app():  # settings from DATABASE_*, which portside_client points at the test db
    return Litestar([leak_connection, fine], plugins=[PortsidePlugin()])


async def test_leaks_a_connection_on_litestar(portside_client):
    async with portside_client(create_app()) as client:
        assert client.lifecycle.binding is not None  # the test's transaction
        assert (await client.get("/connection")).status == 200


async def test_gives_everything_back_on_litestar(portside_client):
    async with portside_client(create_app()) as client:
        assert (await client.get("/fine")).status == 200
"""


def test_a_leak_fails_a_litestar_test(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("PORTSIDE_TEST_DATABASE_URL", "DATABASE_URL", "DATABASE_ASYNC_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("COLUMNS", "300")  # untruncated summary lines
    pytester.makepyfile(test_inner=LITESTAR_TESTS)
    result = pytester.runpytest_subprocess(
        "-p",
        "no:cacheprovider",
        "-W",
        "error",
        # advanced-alchemy, which Litestar imports when installed (as the project's own
        # pytest configuration says).
        "-W",
        "ignore:The declarative_mixin decorator:DeprecationWarning",
        "-ra",
    )
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*portside: the test leaked database resources (checked when the client exited*",
            "*- database 'default' (sqlite+aiosqlite:///*/test.db), async engine: "
            "1 connection(s) checked out and never returned",
        ]
    )
    result.stdout.fnmatch_lines(
        ["FAILED test_inner.py::test_leaks_a_connection_on_litestar - *ConnectionLeakError*"]
    )
