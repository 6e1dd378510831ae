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
from sqlmodel import select
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import BaseRoute, Mount, Route, WebSocketRoute
from starlette.websockets import WebSocket

import portside_starlette
from portside import (
    BlockingSessionError,
    ConfigurationError,
    DatabaseSettings,
    Lifecycle,
    LifecycleStateError,
    NoRequestSessionError,
    Session,
)
from portside.asgi import LIFECYCLE_STATE_KEY
from portside_starlette import get_lifecycle, install
from portside_testing.asgi import AppRunner
from portside_testing.conformance.models import Item, metadata

from .docstrings import docstring_example
from .support import (
    ASGIApp,
    Message,
    checked_out,
    count_in,
    create_tables,
    names_in,
    sqlite,
)

pytestmark = pytest.mark.anyio


def new_app(databases: Any, routes: list[BaseRoute] | None = None, **kwargs: Any) -> Starlette:
    """An app with portside installed, whose own lifespan creates the test tables."""
    app = Starlette(routes=routes)
    install(app, databases, lifespan=create_tables, **kwargs)
    return app


async def write(request: Request) -> Response:
    """``POST /items/{name}``: write an item, answer 201."""
    session = await portside_starlette.async_session(request)
    session.add(Item(name=request.path_params["name"]))
    await session.flush()
    return Response(status_code=201)


WRITE = Route("/items/{name}", write, methods=["POST"])


# -- the app's own lifespans ------------------------------------------------------------


async def test_own_lifespan_receives_the_running_lifecycle_and_its_state_reaches_requests(
    tmp_path: Path,
) -> None:
    settings = sqlite(tmp_path)
    seen: list[Lifecycle] = []

    @asynccontextmanager
    async def own(app: Starlette, lifecycle: Lifecycle) -> AsyncIterator[dict[str, Any]]:
        assert lifecycle.running
        assert get_lifecycle(app) is lifecycle
        seen.append(lifecycle)
        await lifecycle.database().create_all(metadata)  # one line, at startup
        yield {"greeting": "hello"}
        assert lifecycle.running  # portside's lifespan exits after the app's own

    async def greet(request: Request) -> JSONResponse:
        session = await portside_starlette.async_session(request)
        session.add(Item(name=request.state.greeting))
        return JSONResponse({"greeting": request.state.greeting}, status_code=201)

    app = Starlette(routes=[Route("/greet", greet, methods=["POST"])])
    install(app, settings, lifespan=own)
    async with AppRunner(app) as runner:
        assert set(runner.state) == {"greeting", LIFECYCLE_STATE_KEY}
        response = await runner.request("POST", "/greet")
        assert (response.status, response.json()) == (201, {"greeting": "hello"})
    assert names_in(settings) == ["hello"]
    assert not seen[0].running


async def test_a_lifespan_given_to_starlette_still_runs_inside_portsides(
    tmp_path: Path,
) -> None:
    settings = sqlite(tmp_path)
    events: list[str] = []

    @asynccontextmanager
    async def app_lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        lifecycle = get_lifecycle(app)  # the databases are already up
        events.append(f"app startup, running={lifecycle.running}")
        yield {"from_app": "app"}
        events.append(f"app shutdown, running={lifecycle.running}")

    @asynccontextmanager
    async def own(app: Starlette, lifecycle: Lifecycle) -> AsyncIterator[dict[str, Any]]:
        await lifecycle.database().create_all(metadata)
        yield {"from_own": "own"}

    async def state(request: Request) -> Response:
        session = await portside_starlette.async_session(request)
        session.add(Item(name=f"{request.state.from_app}+{request.state.from_own}"))
        return Response(status_code=201)

    app = Starlette(routes=[Route("/state", state, methods=["POST"])], lifespan=app_lifespan)
    install(app, settings, lifespan=own)
    async with AppRunner(app) as runner:
        assert (await runner.request("POST", "/state")).status == 201
    assert events == ["app startup, running=True", "app shutdown, running=True"]
    assert names_in(settings) == ["app+own"]


async def test_lifespans_yielding_no_state(tmp_path: Path) -> None:
    events: list[str] = []

    @asynccontextmanager
    async def app_lifespan(app: Starlette) -> AsyncIterator[None]:
        events.append("app")
        yield

    @asynccontextmanager
    async def own(app: Starlette, lifecycle: Lifecycle) -> AsyncIterator[None]:
        events.append("own")
        yield

    app = Starlette(lifespan=app_lifespan)
    install(app, sqlite(tmp_path), lifespan=own)
    async with AppRunner(app) as runner:
        assert set(runner.state) == {LIFECYCLE_STATE_KEY}
    assert sorted(events) == ["app", "own"]


@pytest.mark.parametrize("which", ["own", "starlette"])
async def test_a_failing_app_lifespan_fails_startup(tmp_path: Path, which: str) -> None:
    attempts: list[Lifecycle] = []

    @asynccontextmanager
    async def failing_once(app: Starlette, *_: Any) -> AsyncIterator[None]:
        attempts.append(get_lifecycle(app))
        if len(attempts) == 1:
            raise KeyError("the app's own startup broke")
        yield

    if which == "own":
        app = Starlette()
        install(app, sqlite(tmp_path), lifespan=failing_once)
    else:
        app = Starlette(lifespan=failing_once)
        install(app, sqlite(tmp_path))
    with pytest.raises(KeyError, match="own startup broke"):
        async with AppRunner(app):
            pass
    assert not attempts[0].running  # the failed start's engines are gone
    async with AppRunner(app):  # the next startup builds fresh engines
        assert get_lifecycle(app).running
        assert get_lifecycle(app) is not attempts[0]


# -- install --------------------------------------------------------------------------------


async def test_install_twice_is_refused(tmp_path: Path) -> None:
    app = Starlette()
    install(app, sqlite(tmp_path))
    with pytest.raises(LifecycleStateError, match="once per app"):
        install(app, sqlite(tmp_path, "other"))
    async with AppRunner(app) as runner:  # the first install is intact
        assert (await runner.request("GET", "/health")).status == 200
    assert not (tmp_path / "other.db").exists()


@pytest.mark.parametrize("with_portside", [True, False])
async def test_install_after_the_app_started_is_refused(
    tmp_path: Path, with_portside: bool
) -> None:
    app = Starlette()
    if with_portside:
        install(app, sqlite(tmp_path))
    async with AppRunner(app):
        with pytest.raises(LifecycleStateError, match="before the app has started"):
            install(app, sqlite(tmp_path, "late"))
    with pytest.raises(LifecycleStateError, match="before the app has started"):
        install(app, sqlite(tmp_path, "late"))


# -- readiness ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "ready", "missing"),
    [
        ({}, "/health", None),
        ({"readiness_path": "/ready"}, "/ready", "/health"),
        ({"readiness_path": None}, None, "/health"),
    ],
)
async def test_readiness_route(
    tmp_path: Path, kwargs: dict[str, Any], ready: str | None, missing: str | None
) -> None:
    app = Starlette()
    install(app, sqlite(tmp_path), **kwargs)
    async with AppRunner(app) as runner:
        if ready is not None:
            response = await runner.request("GET", ready)
            assert (response.status, response.json()["status"]) == (200, "ok")
            assert response.json()["databases"]["default"]["up"] is True
        if missing is not None:
            assert (await runner.request("GET", missing)).status == 404


# -- the lifecycle, in requests, websockets and the app ------------------------------------


async def test_get_lifecycle_from_a_request_a_websocket_and_the_app(tmp_path: Path) -> None:
    async def from_request(request: Request) -> JSONResponse:
        return JSONResponse({"same": get_lifecycle(request) is get_lifecycle(app)})

    async def from_websocket(websocket: WebSocket) -> None:
        await websocket.accept()
        lifecycle = get_lifecycle(websocket)
        try:
            await portside_starlette.async_session(websocket)
        except NoRequestSessionError as exc:
            error = str(exc)
        async with lifecycle.async_session(writes=False) as session:
            count = len((await session.exec(select(Item))).all())
        await websocket.send_json(
            {"same": lifecycle is get_lifecycle(app), "items": count, "error": error}
        )

    app = Starlette(routes=[Route("/same", from_request), WebSocketRoute("/ws", from_websocket)])
    install(app, sqlite(tmp_path), lifespan=create_tables)
    with pytest.raises(LifecycleStateError, match="no running portside lifecycle"):
        get_lifecycle(app)
    async with AppRunner(app) as runner:
        assert (await runner.request("GET", "/same")).json() == {"same": True}
        async with runner.websocket("/ws") as socket:
            answer = await socket.receive_json()
        assert socket.error is None
        assert (answer["same"], answer["items"]) == (True, 0)
        assert "async with lifecycle.async_session() as session" in answer["error"]
        lifecycle = get_lifecycle(app)
        assert (lifecycle.in_flight, checked_out(lifecycle)) == (0, 0)
    assert not lifecycle.running
    with pytest.raises(LifecycleStateError, match="no running portside lifecycle"):
        get_lifecycle(app)


# -- sync sessions on the event loop ----------------------------------------------------


async def test_a_sync_session_used_on_the_loop_raises_at_the_first_query(
    tmp_path: Path,
) -> None:
    settings = sqlite(tmp_path)

    async def on_the_loop(request: Request) -> Response:
        session = await portside_starlette.session(request)
        session.add(Item(name="never"))  # its first use on the event loop: refused
        session.flush()
        return Response(status_code=201)

    app = new_app(settings, [Route("/on-the-loop", on_the_loop, methods=["POST"])])
    async with AppRunner(app) as runner:
        response = await runner.request("POST", "/on-the-loop")
        assert response.status == 500
        assert isinstance(response.error, BlockingSessionError)
        lifecycle = get_lifecycle(app)
        assert (lifecycle.in_flight, checked_out(lifecycle)) == (0, 0)
    assert count_in(settings) == 0


# -- the unit of work is outermost ---------------------------------------------------------


class HandlerError(Exception):
    """What the handler below raises after writing."""


async def write_then_fail(request: Request) -> Response:
    session = await portside_starlette.async_session(request)
    session.add(Item(name=request.path_params["name"]))
    await session.flush()
    raise HandlerError(request.path_params["name"])


FAIL = Route("/fail/{name}", write_then_fail, methods=["POST"])


async def test_a_catch_all_handler_answering_202_commits(database: DatabaseSettings) -> None:
    async def accept_anyway(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"accepted": str(exc)}, status_code=202)

    app = new_app(database, [FAIL])
    app.add_exception_handler(Exception, accept_anyway)
    async with AppRunner(app) as runner:
        response = await runner.request("POST", "/fail/kept")
        # The commit decision saw the 202 the client got.
        assert (response.status, response.json()) == (202, {"accepted": "kept"})
        assert count_in(database) == 1
    assert names_in(database) == ["kept"]


async def test_a_handler_raising_after_writing_answers_500_and_keeps_nothing(
    database: DatabaseSettings,
) -> None:
    app = new_app(database, [FAIL])
    async with AppRunner(app) as runner:
        response = await runner.request("POST", "/fail/lost")
        assert response.status == 500
        assert isinstance(response.error, HandlerError)
    assert count_in(database) == 0


class ExceptionTo200:
    """A user's pure ASGI middleware answering 200 for any exception."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        except HandlerError:
            await PlainTextResponse("handled")(scope, receive, send)


class CreatedTo500:
    """A user's pure ASGI middleware turning the app's 201 into a 500."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        async def rewrite(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] == 201:
                message = {**message, "status": 500}
            await send(message)

        await self.app(scope, receive, rewrite)


async def test_user_middleware_turning_an_exception_into_200_commits(
    database: DatabaseSettings,
) -> None:
    app = new_app(database, [FAIL])
    app.add_middleware(ExceptionTo200)
    async with AppRunner(app) as runner:
        response = await runner.request("POST", "/fail/kept")
        assert (response.status, response.text) == (200, "handled")
        assert runner.errors == []
    assert names_in(database) == ["kept"]


async def test_user_middleware_turning_201_into_500_rolls_back(
    database: DatabaseSettings,
) -> None:
    app = new_app(database, [WRITE])
    app.add_middleware(CreatedTo500)
    async with AppRunner(app) as runner:
        assert (await runner.request("POST", "/items/lost")).status == 500
    assert count_in(database) == 0


# -- mounted apps ------------------------------------------------------------------------


async def test_an_app_mounted_without_portside_uses_the_outer_apps(tmp_path: Path) -> None:
    settings = sqlite(tmp_path)

    async def write_checking(request: Request) -> Response:
        assert get_lifecycle(request) is get_lifecycle(outer)
        return await write(request)

    def write_sync(request: Request) -> Response:
        session = portside_starlette.session_from_thread(request)
        session.add(Item(name=request.path_params["name"]))
        return Response(status_code=201)

    inner = Starlette(  # no portside of its own
        routes=[
            Route("/items/{name}", write_checking, methods=["POST"]),
            Route("/sync/{name}", write_sync, methods=["POST"]),
        ]
    )
    outer = new_app(settings, [Mount("/inner", inner)])
    async with AppRunner(outer) as runner:
        assert (await runner.request("POST", "/inner/items/a")).status == 201
        assert (await runner.request("POST", "/inner/sync/b")).status == 201
        assert runner.errors == []
    assert names_in(settings) == ["a", "b"]


async def test_portside_on_a_mounted_app_says_to_install_it_on_the_outer_app(
    tmp_path: Path,
) -> None:
    inner = new_app(sqlite(tmp_path), [WRITE])
    outer = Starlette(routes=[Mount("/inner", inner)])
    async with AppRunner(outer) as runner:
        response = await runner.request("POST", "/inner/items/lost")
    assert response.status == 500
    assert isinstance(response.error, LifecycleStateError)
    assert "'/inner'" in str(response.error)
    assert "outer app" in str(response.error)
    assert not (tmp_path / "app.db").exists()  # its lifespan never ran


# -- databases and accessors ---------------------------------------------------------------


async def test_two_apps_started_at_once_get_their_own_engines(tmp_path: Path) -> None:
    first, second = sqlite(tmp_path, "first"), sqlite(tmp_path, "second")
    app_1, app_2 = new_app(first, [WRITE]), new_app(second, [WRITE])
    async with AppRunner(app_1) as runner_1, AppRunner(app_2) as runner_2:
        lifecycle_1, lifecycle_2 = get_lifecycle(app_1), get_lifecycle(app_2)
        assert lifecycle_1 is not lifecycle_2
        assert lifecycle_1.database().async_engine is not lifecycle_2.database().async_engine
        assert (await runner_1.request("POST", "/items/one")).status == 201
        assert (await runner_2.request("POST", "/items/two")).status == 201
    assert (names_in(first), names_in(second)) == (["one"], ["two"])


async def test_no_settings_reads_the_environment_at_each_startup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = Starlette()
    install(app)
    for name in ("first", "second"):
        monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / name}.db")
        async with AppRunner(app):
            assert get_lifecycle(app).database().masked_url.endswith(f"{name}.db")
        assert (tmp_path / f"{name}.db").exists()


def add_item(session: Session, name: str) -> None:
    session.add(Item(name=name))


async def test_named_database_accessors_write_to_that_database(tmp_path: Path) -> None:
    default, analytics = sqlite(tmp_path), sqlite(tmp_path, "analytics")

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
    assert names_in(analytics) == ["async", "def", "threadpool"]
    assert names_in(default) == []


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


async def test_a_background_task_opens_its_own_unit_of_work(tmp_path: Path) -> None:
    settings = sqlite(tmp_path)

    async def record(lifecycle: Lifecycle, name: str) -> None:
        async with lifecycle.async_session() as session:
            session.add(Item(name=name))

    async def later(request: Request) -> Response:
        task = BackgroundTask(record, get_lifecycle(request), "x")
        return Response(status_code=202, background=task)

    app = new_app(settings, [Route("/later", later, methods=["POST"])])
    async with AppRunner(app) as runner:
        assert (await runner.request("POST", "/later")).status == 202
        assert names_in(settings) == ["x"]


# -- sync sessions under asyncio and trio ---------------------------------------------


def sync_only_app(settings: DatabaseSettings) -> Starlette:
    """Sync endpoints only: what runs under trio, where async SQLAlchemy cannot."""

    def create(request: Request) -> JSONResponse:
        add_item(portside_starlette.session_from_thread(request), request.path_params["name"])
        return JSONResponse({}, status_code=201)

    def names(request: Request) -> JSONResponse:
        session = portside_starlette.session_from_thread(request)
        return JSONResponse(sorted(session.exec(select(Item.name)).all()))

    routes: list[BaseRoute] = [
        Route("/items/{name}", create, methods=["POST"]),
        Route("/items", names),
    ]
    return new_app(settings, routes)


@pytest.mark.parametrize("anyio_backend", ["asyncio", "trio"])
async def test_sync_sessions_run_on_asyncio_and_trio(tmp_path: Path, anyio_backend: str) -> None:
    # The default engines ("auto"): under trio, only the sync engine is built.
    settings = sqlite(tmp_path)
    app = sync_only_app(settings)
    for run in range(2):  # started again: fresh engines
        async with AppRunner(app) as client:
            kinds = get_lifecycle(app).database().kinds
            assert kinds == (("sync",) if anyio_backend == "trio" else ("sync", "async"))
            assert (await client.request("POST", f"/items/run-{run}")).status == 201
            listed = await client.request("GET", "/items")
            assert listed.json() == [f"run-{i}" for i in range(run + 1)]
            health = await client.request("GET", "/health")
            assert (health.status, health.json()["status"]) == (200, "ok")


# -- the documented example ---------------------------------------------------------------


def test_the_module_docstring_example_runs(tmp_path: Path) -> None:
    # A subprocess: the example declares a table on SQLModel's global metadata. Its
    # own lifespan creates the table: nothing is prepared here.
    script = docstring_example(portside_starlette) + textwrap.dedent(
        """
        import anyio

        from portside_testing.asgi import AppRunner

        async def main() -> None:
            async with AppRunner(app) as client:
                created = await client.request("POST", "/heroes", json={"name": "Deadpond"})
                assert (created.status, created.json()) == (201, {"id": 1, "name": "Deadpond"})
                health = await client.request("GET", "/health")
                assert (health.status, health.json()["status"]) == (200, "ok")
            async with AppRunner(app) as client:  # started again: fresh engines
                created = await client.request("POST", "/heroes", json={"name": "Rusty"})
                assert (created.status, created.json()["id"]) == (201, 2)

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
