"""What is specific to portside-fastapi and not covered by the conformance suite."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any

import pytest
from fastapi import BackgroundTasks, Depends, FastAPI, Request, WebSocket
from fastapi.responses import JSONResponse, Response
from sqlmodel import select

import portside_fastapi
from portside import (
    AsyncSession,
    BlockingSessionError,
    DatabaseSettings,
    Lifecycle,
    LifecycleStateError,
    NoRequestSessionError,
    Session,
)
from portside.asgi import LIFECYCLE_STATE_KEY
from portside_fastapi import (
    AsyncSessionDep,
    LifecycleDep,
    SessionDep,
    async_session_dependency,
    get_lifecycle,
    install,
    session_dependency,
)
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
    websocket_handshake,
)

pytestmark = pytest.mark.anyio


def new_app(databases: Any, **kwargs: Any) -> FastAPI:
    """An app with portside installed, whose own lifespan creates the test tables."""
    app = FastAPI()
    install(app, databases, lifespan=create_tables, **kwargs)
    return app


def add_writer(app: FastAPI) -> None:
    """``POST /items/{name}`` writes an item and answers 201."""

    @app.post("/items/{name}", status_code=201)
    async def write(name: str, session: AsyncSessionDep) -> None:
        session.add(Item(name=name))
        await session.flush()


# -- the app's own lifespans ------------------------------------------------------------


async def test_own_lifespan_receives_the_running_lifecycle_and_its_state_reaches_requests(
    tmp_path: Path,
) -> None:
    settings = sqlite(tmp_path)
    seen: list[Lifecycle] = []

    @asynccontextmanager
    async def own(app: FastAPI, lifecycle: Lifecycle) -> AsyncIterator[dict[str, Any]]:
        assert lifecycle.running
        assert get_lifecycle(app) is lifecycle
        seen.append(lifecycle)
        await lifecycle.database().create_all(metadata)  # one line, at startup
        yield {"greeting": "hello"}
        assert lifecycle.running  # portside's lifespan exits after the app's own

    app = FastAPI()
    install(app, settings, lifespan=own)

    @app.post("/greet", status_code=201)
    async def greet(request: Request, session: AsyncSessionDep) -> dict[str, str]:
        session.add(Item(name=request.state.greeting))
        await session.flush()
        return {"greeting": request.state.greeting}

    async with AppRunner(app) as runner:
        assert set(runner.state) == {"greeting", LIFECYCLE_STATE_KEY}
        response = await runner.request("POST", "/greet")
        assert (response.status, response.json()) == (201, {"greeting": "hello"})
    assert names_in(settings) == ["hello"]
    assert not seen[0].running


async def test_a_lifespan_given_to_fastapi_still_runs_inside_portsides(tmp_path: Path) -> None:
    settings = sqlite(tmp_path)
    events: list[str] = []

    @asynccontextmanager
    async def app_lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        lifecycle = get_lifecycle(app)  # the databases are already up
        events.append(f"app startup, running={lifecycle.running}")
        yield {"from_app": "app"}
        events.append(f"app shutdown, running={lifecycle.running}")

    @asynccontextmanager
    async def own(app: FastAPI, lifecycle: Lifecycle) -> AsyncIterator[dict[str, Any]]:
        await lifecycle.database().create_all(metadata)
        yield {"from_own": "own"}

    app = FastAPI(lifespan=app_lifespan)
    install(app, settings, lifespan=own)

    @app.post("/state", status_code=201)
    async def state(request: Request, session: AsyncSessionDep) -> None:
        session.add(Item(name=f"{request.state.from_app}+{request.state.from_own}"))

    async with AppRunner(app) as runner:
        assert (await runner.request("POST", "/state")).status == 201
    assert events == ["app startup, running=True", "app shutdown, running=True"]
    assert names_in(settings) == ["app+own"]


# Starlette before 1.0 warns about the hooks FastAPI passes on (the lowest-direct end).
@pytest.mark.filterwarnings("ignore:The on_startup and on_shutdown parameters:DeprecationWarning")
async def test_on_startup_and_on_shutdown_hooks_run_with_the_databases_up(
    tmp_path: Path,
) -> None:
    settings = sqlite(tmp_path)

    async def on_startup() -> None:
        await get_lifecycle(app).database().create_all(metadata)
        async with get_lifecycle(app).async_session() as session:
            session.add(Item(name="at startup"))

    async def on_shutdown() -> None:
        async with get_lifecycle(app).async_session() as session:
            session.add(Item(name="at shutdown"))

    app = FastAPI(on_startup=[on_startup], on_shutdown=[on_shutdown])
    install(app, settings)
    async with AppRunner(app):
        assert names_in(settings) == ["at startup"]
    assert names_in(settings) == ["at shutdown", "at startup"]


async def test_lifespans_yielding_no_state(tmp_path: Path) -> None:
    events: list[str] = []

    @asynccontextmanager
    async def app_lifespan(app: FastAPI) -> AsyncIterator[None]:
        events.append("app")
        yield

    @asynccontextmanager
    async def own(app: FastAPI, lifecycle: Lifecycle) -> AsyncIterator[None]:
        events.append("own")
        yield

    app = FastAPI(lifespan=app_lifespan)
    install(app, sqlite(tmp_path), lifespan=own)
    async with AppRunner(app) as runner:
        assert set(runner.state) == {LIFECYCLE_STATE_KEY}
    assert sorted(events) == ["app", "own"]


@pytest.mark.parametrize("which", ["own", "fastapi"])
async def test_a_failing_app_lifespan_fails_startup(tmp_path: Path, which: str) -> None:
    attempts: list[Lifecycle] = []

    @asynccontextmanager
    async def failing_once(app: FastAPI, *_: Any) -> AsyncIterator[None]:
        attempts.append(get_lifecycle(app))
        if len(attempts) == 1:
            raise KeyError("the app's own startup broke")
        yield

    if which == "own":
        app = FastAPI()
        install(app, sqlite(tmp_path), lifespan=failing_once)
    else:
        app = FastAPI(lifespan=failing_once)
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
    app = FastAPI()
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
    app = FastAPI()
    if with_portside:
        install(app, sqlite(tmp_path))
    async with AppRunner(app):
        with pytest.raises(LifecycleStateError, match="before the app has started"):
            install(app, sqlite(tmp_path, "late"))
    with pytest.raises(LifecycleStateError, match="before the app has started"):
        install(app, sqlite(tmp_path, "late"))


# -- readiness ------------------------------------------------------------------------------


async def test_readiness_at_health_by_default_hidden_from_the_schema(tmp_path: Path) -> None:
    app = FastAPI()
    install(app, sqlite(tmp_path))
    assert "/health" not in app.openapi()["paths"]
    async with AppRunner(app) as runner:
        response = await runner.request("GET", "/health")
        assert (response.status, response.json()["status"]) == (200, "ok")
        assert response.json()["databases"]["default"]["up"] is True
        assert "sqlite" not in response.text  # no URL in the body


@pytest.mark.parametrize(("path", "missing"), [("/ready", "/health"), (None, "/health")])
async def test_readiness_path_moves_or_removes_the_route(
    tmp_path: Path, path: str | None, missing: str
) -> None:
    app = FastAPI()
    install(app, sqlite(tmp_path), readiness_path=path)
    assert app.openapi()["paths"] == {}
    async with AppRunner(app) as runner:
        assert (await runner.request("GET", missing)).status == 404
        if path is not None:
            assert (await runner.request("GET", path)).json()["status"] == "ok"


# -- the lifecycle, in requests, websockets and the app ------------------------------------


async def test_get_lifecycle_from_a_request_a_websocket_and_the_app(tmp_path: Path) -> None:
    app = FastAPI()
    install(app, sqlite(tmp_path))
    same: list[bool] = []

    @app.get("/same")
    async def from_request(request: Request, lifecycle: LifecycleDep) -> dict[str, bool]:
        return {"same": get_lifecycle(request) is lifecycle is get_lifecycle(app)}

    @app.websocket("/ws")
    async def from_websocket(websocket: WebSocket, lifecycle: LifecycleDep) -> None:
        # LifecycleDep in a websocket endpoint (it once failed: "missing request").
        await websocket.accept()
        same.append(get_lifecycle(websocket) is lifecycle is get_lifecycle(app))
        async with lifecycle.async_session(writes=False) as session:
            await websocket.send_json({"items": len((await session.exec(select(Item))).all())})

    with pytest.raises(LifecycleStateError, match="no running portside lifecycle"):
        get_lifecycle(app)
    async with AppRunner(app) as runner:
        await get_lifecycle(app).database().create_all(metadata)
        assert (await runner.request("GET", "/same")).json() == {"same": True}
        async with runner.websocket("/ws") as socket:
            assert await socket.receive_json() == {"items": 0}
        assert socket.error is None
        assert same == [True]
        lifecycle = get_lifecycle(app)
    assert not lifecycle.running
    with pytest.raises(LifecycleStateError, match="no running portside lifecycle"):
        get_lifecycle(app)


async def test_a_websocket_asking_for_the_request_session_gets_no_request_session_error(
    tmp_path: Path,
) -> None:
    app = FastAPI()
    install(app, sqlite(tmp_path))

    @app.websocket("/ws")
    async def wants_a_session(websocket: WebSocket, session: AsyncSessionDep) -> None:
        await websocket.accept()  # never reached: the dependency fails first

    async with AppRunner(app) as runner:
        # FastAPI resolves dependencies before the endpoint runs: the app raises, and
        # the server closes the socket. Not a TypeError about a missing `request`.
        with pytest.raises(NoRequestSessionError, match=r"async with lifecycle\.async_session\(\)"):
            await websocket_handshake(runner, app, "/ws")
        lifecycle = get_lifecycle(app)
        assert (lifecycle.in_flight, checked_out(lifecycle)) == (0, 0)


# -- sync sessions on the event loop ----------------------------------------------------


async def test_session_dep_in_an_async_endpoint_raises_at_the_first_query(
    tmp_path: Path,
) -> None:
    settings = sqlite(tmp_path)
    app = new_app(settings)

    @app.post("/on-the-loop", status_code=201)
    async def on_the_loop(session: SessionDep) -> None:
        session.add(Item(name="never"))  # its first use on the event loop: refused
        session.flush()

    async with AppRunner(app) as runner:
        response = await runner.request("POST", "/on-the-loop")
        assert response.status == 500
        assert isinstance(response.error, BlockingSessionError)
        lifecycle = get_lifecycle(app)
        assert (lifecycle.in_flight, checked_out(lifecycle)) == (0, 0)
    assert count_in(settings) == 0


# -- the unit of work is outermost ---------------------------------------------------------


class HandlerError(Exception):
    """What the handlers below raise after writing."""


def failing_writer(app: FastAPI) -> None:
    """``POST /fail/{name}`` writes an item, then raises."""

    @app.post("/fail/{name}", status_code=201)
    async def write_then_fail(name: str, session: AsyncSessionDep) -> None:
        session.add(Item(name=name))
        await session.flush()
        raise HandlerError(name)


async def test_a_catch_all_handler_answering_202_commits(database: DatabaseSettings) -> None:
    app = new_app(database)
    failing_writer(app)

    @app.exception_handler(Exception)
    async def accept_anyway(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"accepted": str(exc)}, status_code=202)

    async with AppRunner(app) as runner:
        response = await runner.request("POST", "/fail/kept")
        # The commit decision saw the 202 the client got.
        assert (response.status, response.json()) == (202, {"accepted": "kept"})
        assert count_in(database) == 1
    assert names_in(database) == ["kept"]


async def test_a_handler_raising_after_writing_answers_500_and_keeps_nothing(
    database: DatabaseSettings,
) -> None:
    app = new_app(database)
    failing_writer(app)
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
            await Response("handled", status_code=200)(scope, receive, send)


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
    app = new_app(database)
    failing_writer(app)
    app.add_middleware(ExceptionTo200)
    async with AppRunner(app) as runner:
        response = await runner.request("POST", "/fail/kept")
        assert (response.status, response.text) == (200, "handled")
        assert runner.errors == []
    assert names_in(database) == ["kept"]


async def test_user_middleware_turning_201_into_500_rolls_back(
    database: DatabaseSettings,
) -> None:
    app = new_app(database)
    add_writer(app)
    app.add_middleware(CreatedTo500)
    async with AppRunner(app) as runner:
        assert (await runner.request("POST", "/items/lost")).status == 500
    assert count_in(database) == 0


# -- mounted apps ------------------------------------------------------------------------


async def test_an_app_mounted_without_portside_uses_the_outer_apps(tmp_path: Path) -> None:
    settings = sqlite(tmp_path)
    inner = FastAPI()  # no portside of its own

    @inner.post("/items/{name}", status_code=201)
    async def write(name: str, session: AsyncSessionDep, lifecycle: LifecycleDep) -> None:
        assert lifecycle is get_lifecycle(outer)
        session.add(Item(name=name))

    @inner.post("/sync/{name}", status_code=201)
    def write_sync(name: str, session: SessionDep) -> None:
        session.add(Item(name=name))

    outer = new_app(settings)
    outer.mount("/inner", inner)
    async with AppRunner(outer) as runner:
        assert (await runner.request("POST", "/inner/items/a")).status == 201
        assert (await runner.request("POST", "/inner/sync/b")).status == 201
        assert runner.errors == []
    assert names_in(settings) == ["a", "b"]


async def test_portside_on_a_mounted_app_says_to_install_it_on_the_outer_app(
    tmp_path: Path,
) -> None:
    inner = new_app(sqlite(tmp_path))
    add_writer(inner)
    outer = FastAPI()
    outer.mount("/inner", inner)
    async with AppRunner(outer) as runner:
        response = await runner.request("POST", "/inner/items/lost")
    assert response.status == 500
    assert isinstance(response.error, LifecycleStateError)
    assert "'/inner'" in str(response.error)
    assert "outer app" in str(response.error)
    assert not (tmp_path / "app.db").exists()  # its lifespan never ran


# -- databases -------------------------------------------------------------------------


async def test_two_apps_started_at_once_get_their_own_engines(tmp_path: Path) -> None:
    first, second = sqlite(tmp_path, "first"), sqlite(tmp_path, "second")
    app_1, app_2 = new_app(first), new_app(second)
    add_writer(app_1)
    add_writer(app_2)
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
    app = FastAPI()
    install(app)
    for name in ("first", "second"):
        monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / name}.db")
        async with AppRunner(app):
            assert get_lifecycle(app).database().masked_url.endswith(f"{name}.db")
        assert (tmp_path / f"{name}.db").exists()


AnalyticsSession = Annotated[AsyncSession, Depends(async_session_dependency("analytics"))]
SyncAnalyticsSession = Annotated[Session, Depends(session_dependency("analytics"))]


async def test_named_database_dependencies_write_to_that_database(tmp_path: Path) -> None:
    default, analytics = sqlite(tmp_path), sqlite(tmp_path, "analytics")
    app = new_app({"default": default, "analytics": analytics})

    @app.post("/async/{name}", status_code=201)
    async def write_async(name: str, session: AnalyticsSession) -> None:
        session.add(Item(name=name))

    @app.post("/sync/{name}", status_code=201)
    def write_sync(name: str, session: SyncAnalyticsSession) -> None:
        session.add(Item(name=name))

    async with AppRunner(app) as runner:
        assert (await runner.request("POST", "/async/a")).status == 201
        assert (await runner.request("POST", "/sync/b")).status == 201
    assert names_in(analytics) == ["a", "b"]
    assert names_in(default) == []


def test_dependencies_for_one_name_are_one_callable() -> None:
    # FastAPI caches a dependency per request by its callable.
    assert async_session_dependency("analytics") is async_session_dependency("analytics")
    assert session_dependency("analytics") is session_dependency("analytics")


async def test_a_background_task_opens_its_own_unit_of_work(tmp_path: Path) -> None:
    settings = sqlite(tmp_path)
    app = new_app(settings)

    async def record(lifecycle: Lifecycle, name: str) -> None:
        async with lifecycle.async_session() as session:
            session.add(Item(name=name))

    @app.post("/later/{name}", status_code=202)
    async def later(name: str, lifecycle: LifecycleDep, tasks: BackgroundTasks) -> None:
        tasks.add_task(record, lifecycle, name)

    async with AppRunner(app) as runner:
        assert (await runner.request("POST", "/later/x")).status == 202
        assert names_in(settings) == ["x"]


# -- the documented example ---------------------------------------------------------------


def test_the_module_docstring_example_runs(tmp_path: Path) -> None:
    # A subprocess: the example declares a table on SQLModel's global metadata. Its
    # own lifespan creates the table: nothing is prepared here.
    script = docstring_example(portside_fastapi) + textwrap.dedent(
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
