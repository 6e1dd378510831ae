"""What is specific to portside-starlette and not covered by the conformance suite."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine
from sqlmodel import select
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

import portside_starlette
from portside import ConfigurationError, DatabaseSettings, Lifecycle, Session
from portside.asgi import LIFECYCLE_STATE_KEY
from portside_starlette import UnitOfWorkMiddleware, lifespan
from portside_testing.asgi import AppRunner
from portside_testing.conformance.models import Item, metadata

from .docstrings import docstring_example


def sqlite(tmp_path: Path, name: str = "app", **overrides: Any) -> DatabaseSettings:
    return DatabaseSettings(url=f"sqlite:///{tmp_path / name}.db", **overrides)


def create_tables(*settings: DatabaseSettings) -> None:
    for each in settings:
        engine = create_engine(each.url or "")
        metadata.create_all(engine)
        engine.dispose()


async def names_in(lifecycle: Lifecycle, name: str | None = None) -> list[str]:
    async with lifecycle.async_session(name, writes=False) as session:
        return sorted((await session.exec(select(Item.name))).all())


def new_app(databases: Any, routes: list[BaseRoute] | None = None, **kwargs: Any) -> Starlette:
    return Starlette(
        routes=routes,
        middleware=[Middleware(UnitOfWorkMiddleware)],
        lifespan=lifespan(databases, **kwargs),
    )


# -- wrap= ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_wrap_runs_the_app_lifespan_inside_ours_and_merges_its_state(
    tmp_path: Path,
) -> None:
    events: list[str] = []
    seen: list[Lifecycle] = []

    @asynccontextmanager
    async def app_lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        events.append("app startup")
        yield {"greeting": "hello"}
        # Ours exits after the app's: the databases are still up here.
        events.append(f"app shutdown, databases running={seen[0].running}")

    async def greet(request: Request) -> JSONResponse:
        seen.append(portside_starlette.lifecycle(request))
        session = await portside_starlette.async_session(request)
        session.add(Item(name=request.state.greeting))
        return JSONResponse({"greeting": request.state.greeting})

    settings = sqlite(tmp_path)
    create_tables(settings)
    app = new_app(settings, [Route("/greet", greet, methods=["POST"])], wrap=app_lifespan)
    async with AppRunner(app) as runner:
        assert set(runner.state) == {"greeting", LIFECYCLE_STATE_KEY}
        response = await runner.request("POST", "/greet")
        assert (response.status, response.json()) == (200, {"greeting": "hello"})
        assert await names_in(seen[0]) == ["hello"]
    assert events == ["app startup", "app shutdown, databases running=True"]
    assert not seen[0].running


@pytest.mark.anyio
async def test_wrap_accepts_a_lifespan_that_yields_no_state(tmp_path: Path) -> None:
    events: list[str] = []

    @asynccontextmanager
    async def app_lifespan(app: Starlette) -> AsyncIterator[None]:
        events.append("startup")
        yield
        events.append("shutdown")

    async with AppRunner(new_app(sqlite(tmp_path), wrap=app_lifespan)) as runner:
        assert set(runner.state) == {LIFECYCLE_STATE_KEY}
    assert events == ["startup", "shutdown"]


# -- the middleware check --------------------------------------------------------------


@pytest.mark.anyio
async def test_startup_without_the_middleware_fails_and_says_what_to_add(
    tmp_path: Path,
) -> None:
    app = Starlette(lifespan=lifespan(sqlite(tmp_path)))
    with pytest.raises(ConfigurationError) as caught:
        async with AppRunner(app):
            pass
    line = "middleware=[Middleware(portside_starlette.UnitOfWorkMiddleware)]"
    assert line in str(caught.value)
    assert not (tmp_path / "app.db").exists()  # failed before any engine was built


@pytest.mark.anyio
async def test_middleware_added_with_add_middleware_counts(tmp_path: Path) -> None:
    app = Starlette(lifespan=lifespan(sqlite(tmp_path)))
    app.add_middleware(UnitOfWorkMiddleware)
    async with AppRunner(app) as runner:
        assert runner.state[LIFECYCLE_STATE_KEY].running


# -- accessors -------------------------------------------------------------------------


def add_item(session: Session, name: str) -> None:
    session.add(Item(name=name))


@pytest.mark.anyio
async def test_named_database_accessors_write_to_that_database(tmp_path: Path) -> None:
    default, analytics = sqlite(tmp_path), sqlite(tmp_path, "analytics")
    create_tables(default, analytics)

    async def write_async(request: Request) -> Response:
        session = await portside_starlette.async_session(request, "analytics")
        session.add(Item(name="async"))
        return Response(status_code=201)

    async def write_in_threadpool(request: Request) -> Response:
        session = await portside_starlette.session(request, "analytics")
        await run_in_threadpool(add_item, session, "threadpool")
        return Response(status_code=201)

    def write_from_def_endpoint(request: Request) -> Response:
        add_item(portside_starlette.session_from_thread(request, "analytics"), "def")
        return Response(status_code=201)

    routes: list[BaseRoute] = [
        Route("/async", write_async, methods=["POST"]),
        Route("/threadpool", write_in_threadpool, methods=["POST"]),
        Route("/def", write_from_def_endpoint, methods=["POST"]),
    ]
    app = new_app({"default": default, "analytics": analytics}, routes)
    async with AppRunner(app) as runner:
        for path in ("/async", "/threadpool", "/def"):
            assert (await runner.request("POST", path)).status == 201
        running: Lifecycle = runner.state[LIFECYCLE_STATE_KEY]
        assert await names_in(running, "analytics") == ["async", "def", "threadpool"]
        assert await names_in(running) == []


@pytest.mark.anyio
async def test_an_unknown_database_name_says_which_exist(tmp_path: Path) -> None:
    async def wrong(request: Request) -> Response:
        await portside_starlette.async_session(request, "nope")
        return Response()

    app = new_app(sqlite(tmp_path), [Route("/wrong", wrong)])
    async with AppRunner(app) as runner:
        response = await runner.request("GET", "/wrong")
    assert response.status == 500
    assert isinstance(response.error, ConfigurationError)
    assert "'default'" in str(response.error)


@pytest.mark.anyio
async def test_a_background_task_opens_its_own_unit_of_work(tmp_path: Path) -> None:
    settings = sqlite(tmp_path)
    create_tables(settings)

    async def record(lifecycle: Lifecycle, name: str) -> None:
        async with lifecycle.async_session() as session:
            session.add(Item(name=name))

    async def later(request: Request) -> Response:
        task = BackgroundTask(record, portside_starlette.lifecycle(request), "x")
        return Response(status_code=202, background=task)

    app = new_app(settings, [Route("/later", later, methods=["POST"])])
    async with AppRunner(app) as runner:
        assert (await runner.request("POST", "/later")).status == 202
        assert await names_in(runner.state[LIFECYCLE_STATE_KEY]) == ["x"]


# -- sync sessions under asyncio and trio ---------------------------------------------


def sync_only_app(settings: DatabaseSettings) -> Starlette:
    """Sync engines only: what runs under trio, where async SQLAlchemy cannot."""

    def create(request: Request) -> JSONResponse:
        add_item(portside_starlette.session_from_thread(request), request.path_params["name"])
        return JSONResponse({}, status_code=201)

    def names(request: Request) -> JSONResponse:
        session = portside_starlette.session_from_thread(request)
        return JSONResponse(sorted(session.exec(select(Item.name)).all()))

    routes: list[BaseRoute] = [
        Route("/items/{name}", create, methods=["POST"]),
        Route("/items", names),
        Route("/health", portside_starlette.readiness),
    ]
    return new_app(settings, routes)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_sync_sessions_run_on_asyncio_and_trio(tmp_path: Path, anyio_backend: str) -> None:
    settings = sqlite(tmp_path, engines="sync")
    create_tables(settings)
    app = sync_only_app(settings)
    for run in range(2):  # started again: fresh engines
        async with AppRunner(app) as client:
            assert (await client.request("POST", f"/items/run-{run}")).status == 201
            listed = await client.request("GET", "/items")
            assert listed.json() == [f"run-{i}" for i in range(run + 1)]
            health = await client.request("GET", "/health")
            assert (health.status, health.json()["status"]) == (200, "ok")


# -- the documented example ---------------------------------------------------------------


def test_the_module_docstring_example_runs(tmp_path: Path) -> None:
    # A subprocess: the example declares a table on SQLModel's global metadata.
    script = docstring_example(portside_starlette) + textwrap.dedent(
        """
        import anyio
        from sqlalchemy import create_engine

        from portside_testing.asgi import AppRunner

        engine = create_engine("sqlite:///heroes.db")
        SQLModel.metadata.create_all(engine)
        engine.dispose()

        async def main() -> None:
            async with AppRunner(app) as client:
                created = await client.request("POST", "/heroes", json={"name": "Deadpond"})
                assert (created.status, created.json()) == (201, {"id": 1, "name": "Deadpond"})
                health = await client.request("GET", "/health")
                assert (health.status, health.json()["status"]) == (200, "ok")
            async with AppRunner(app) as client:  # started again: fresh engines
                assert (await client.request("GET", "/health")).status == 200

        anyio.run(main)
        print("example ok")
        """
    )
    result = subprocess.run(
        [sys.executable, "-W", "error", "-c", script],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "example ok"


# -- under a real server -----------------------------------------------------------------
