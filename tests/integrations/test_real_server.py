"""Each integration under a real server: uvicorn in a subprocess, real HTTP.

Apps installed as in production: a write is answered 201 only once committed, a
commit that fails at COMMIT time is answered with a 5xx, a second request reads the
first one's write, and the status a catch-all exception handler chooses is the one
the commit decision saw. SQLite files and a PostgreSQL database of the test's own.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine

from portside import DatabaseSettings
from portside_testing.conformance.models import metadata

from .support import names_in

HARNESS_APP = """
import sys
sys.path.insert(0, {harness_dir!r})
from harness_{framework} import {harness}
from portside import DatabaseSettings
app = {harness}().build_app(DatabaseSettings(url={url!r}), {mode!r})
"""

HARNESSES = {
    "fastapi": "FastAPIHarness",
    "litestar": "LitestarHarness",
    "starlette": "StarletteHarness",
}

# The same small app written for each framework with its install: its own lifespan
# creates the table through the lifecycle it receives, a catch-all exception handler
# answers 202 for a handler that wrote and then raised.
COMMON = """
from contextlib import asynccontextmanager

from portside import DatabaseSettings, Lifecycle
from portside_testing.conformance.models import Item, metadata

SETTINGS = DatabaseSettings(url={url!r})


@asynccontextmanager
async def create_tables(app, lifecycle: Lifecycle):
    await lifecycle.database().create_all(metadata)
    yield
"""

INSTALLED_APPS = {
    "fastapi": """
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

import portside_fastapi
from portside_fastapi import AsyncSessionDep

app = FastAPI()
portside_fastapi.install(app, SETTINGS, lifespan=create_tables, readiness_path="/ready")


@app.post("/items/{{name}}", status_code=201)
async def write(name: str, session: AsyncSessionDep) -> None:
    session.add(Item(name=name))
    await session.flush()


@app.post("/fail/{{name}}", status_code=201)
async def write_then_fail(name: str, session: AsyncSessionDep) -> None:
    session.add(Item(name=name))
    await session.flush()
    raise RuntimeError("after writing")


@app.exception_handler(Exception)
async def accept_anyway(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({{"accepted": True}}, status_code=202)
""",
    "starlette": """
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

import portside_starlette


async def write(request: Request) -> Response:
    session = await portside_starlette.async_session(request)
    session.add(Item(name=request.path_params["name"]))
    await session.flush()
    return Response(status_code=201)


async def write_then_fail(request: Request) -> Response:
    await write(request)
    raise RuntimeError("after writing")


async def accept_anyway(request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({{"accepted": True}}, status_code=202)


app = Starlette(
    routes=[
        Route("/items/{{name}}", write, methods=["POST"]),
        Route("/fail/{{name}}", write_then_fail, methods=["POST"]),
    ],
    exception_handlers={{Exception: accept_anyway}},
)
portside_starlette.install(app, SETTINGS, lifespan=create_tables, readiness_path="/ready")
""",
    "litestar": """
from litestar import Litestar, Request, Response, post

from portside_litestar import AsyncSessionDep, PortsidePlugin


async def add(session, name: str) -> None:
    session.add(Item(name=name))
    await session.flush()


@post("/items/{{name:str}}")
async def write(name: str, db_session: AsyncSessionDep) -> None:
    await add(db_session, name)


@post("/fail/{{name:str}}")
async def write_then_fail(name: str, db_session: AsyncSessionDep) -> None:
    await add(db_session, name)
    raise RuntimeError("after writing")


def accept_anyway(request: Request, exc: Exception) -> Response:
    return Response({{"accepted": True}}, status_code=202)


app = Litestar(
    [write, write_then_fail],
    plugins=[PortsidePlugin(SETTINGS, lifespan=create_tables, readiness_path="/ready")],
    # Not Exception: Litestar would hand it its own 404s too.
    exception_handlers={{RuntimeError: accept_anyway}},
)
""",
}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@contextmanager
def served(tmp_path: Path, source: str, ready_path: str) -> Iterator[httpx.Client]:
    """Serve ``source`` (a module defining ``app``) with uvicorn; stop it with SIGTERM."""
    (tmp_path / "served.py").write_text(source)
    port = free_port()
    command = [sys.executable, "-m", "uvicorn", "served:app", "--port", str(port)]
    log = tmp_path / "uvicorn.log"
    with log.open("wb") as out:
        server = subprocess.Popen(command, cwd=tmp_path, stdout=out, stderr=out)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            deadline = time.monotonic() + 30
            while True:
                assert server.poll() is None, log.read_text()
                try:
                    if client.get(ready_path).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.1)
            yield client
    finally:
        server.send_signal(signal.SIGTERM)  # uvicorn's graceful shutdown
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    assert b"Application shutdown complete" in log.read_bytes(), log.read_text()


@pytest.mark.parametrize("mode", ["async", "sync"])
@pytest.mark.parametrize("framework", sorted(HARNESSES))
def test_the_conformance_apps_under_uvicorn_commit_before_answering(
    tmp_path: Path, database: DatabaseSettings, framework: str, mode: str
) -> None:
    engine = create_engine(database.url or "")
    with engine.begin() as connection:
        metadata.create_all(connection)
    engine.dispose()
    source = HARNESS_APP.format(
        harness_dir=str(Path(__file__).parents[1] / "conformance"),
        framework=framework,
        harness=HARNESSES[framework],
        url=database.url,
        mode=mode,
    )
    with served(tmp_path, source, "/health") as client:
        created = client.post("/items", json={"name": "served"})
        assert created.status_code == 201, created.text
        failed = client.post("/items/deferred", json={"name": "orphan"})
        assert failed.status_code >= 500, failed.text
        fetched = client.get(f"/items/{created.json()['id']}")
        assert (fetched.status_code, fetched.json()) == (200, created.json())
        assert client.get("/items").json() == {"names": ["served"]}
    assert names_in(database) == ["served"]


@pytest.mark.parametrize("framework", sorted(INSTALLED_APPS))
def test_an_installed_app_under_uvicorn_answers_the_status_it_committed_with(
    tmp_path: Path, database: DatabaseSettings, framework: str
) -> None:
    source = (COMMON + INSTALLED_APPS[framework]).format(url=database.url)
    with served(tmp_path, source, "/ready") as client:
        assert client.get("/health").status_code == 404  # moved to /ready
        assert client.post("/items/created").status_code == 201
        # The handler wrote and raised; the catch-all answered 202: committed.
        caught = client.post("/fail/caught")
        assert (caught.status_code, caught.json()) == (202, {"accepted": True})
        assert names_in(database) == ["caught", "created"]
