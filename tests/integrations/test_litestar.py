"""What is specific to portside-litestar and not covered by the conformance suite."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import pytest
from litestar import Litestar, Request, Response, WebSocket, get, post, websocket
from litestar.datastructures import State
from sqlmodel import func, select

import portside_litestar
from portside import BlockingSessionError, DatabaseSettings, Lifecycle, LifecycleStateError
from portside_litestar import (
    AsyncSessionDep,
    LifecycleDep,
    PortsidePlugin,
    SessionDep,
    async_session_dependency,
    get_lifecycle,
    session_dependency,
)
from portside_testing.asgi import AppRunner
from portside_testing.conformance.models import Item, metadata

from .docstrings import docstring_example
from .support import ASGIApp, checked_out, count_in, create_tables, names_in, sqlite

pytestmark = pytest.mark.anyio


def run(app: Litestar) -> AppRunner:
    """An :class:`AppRunner` for ``app`` (typed for plain ASGI mappings, not Litestar's)."""
    return AppRunner(cast("ASGIApp", app))


def plugin(databases: Any, **kwargs: Any) -> PortsidePlugin:
    """The plugin, with an own lifespan creating the test tables."""
    return PortsidePlugin(databases, lifespan=create_tables, **kwargs)


@post("/items")
async def add_item(db_session: AsyncSessionDep) -> dict[str, str]:
    db_session.add(Item(name="async"))
    return {"name": "async"}


@post("/items/sync", sync_to_thread=True)
def add_item_sync(sync_db_session: SessionDep) -> dict[str, str]:
    sync_db_session.add(Item(name="sync"))
    return {"name": "sync"}


class HandlerError(Exception):
    """What the handler below raises after writing."""


@post("/fail")
async def write_then_fail(db_session: AsyncSessionDep) -> None:
    db_session.add(Item(name="written"))
    await db_session.flush()
    raise HandlerError("after writing")


# -- lifespans and hooks -----------------------------------------------------------------


async def test_own_lifespan_app_lifespans_and_hooks_use_the_databases(tmp_path: Path) -> None:
    settings = sqlite(tmp_path)
    seen: list[str] = []

    @asynccontextmanager
    async def own(app: Litestar, lifecycle: Lifecycle) -> AsyncIterator[None]:
        assert lifecycle.running
        assert get_lifecycle(app) is lifecycle
        await lifecycle.database().create_all(metadata)  # one line, at startup
        seen.append("own started")
        yield
        seen.append("own stopped")

    @asynccontextmanager
    async def app_lifespan(app: Litestar) -> AsyncIterator[None]:
        # Entered after the plugin's lifespan and left before it: the engines are up.
        seen.append("app lifespan started")
        yield
        async with get_lifecycle(app).async_session() as session:
            session.add(Item(name=f"written at shutdown {len(seen)}"))
        seen.append("app lifespan stopped")

    async def on_startup(app: Litestar) -> None:
        seen.append("on_startup")
        async with get_lifecycle(app).async_session() as session:
            session.add(Item(name=f"written at startup {len(seen)}"))

    app = Litestar(
        [add_item, add_item_sync],
        plugins=[PortsidePlugin(settings, lifespan=own)],
        lifespan=[app_lifespan],
        on_startup=[on_startup],
    )
    async with run(app) as runner:
        assert (await runner.request("POST", "/items")).status == 201
        assert (await runner.request("POST", "/items/sync")).status == 201
        assert names_in(settings) == ["async", "sync", "written at startup 3"]
    assert seen == [
        "own started",
        "app lifespan started",
        "on_startup",
        "app lifespan stopped",
        "own stopped",
    ]
    assert names_in(settings) == [
        "async",
        "sync",
        "written at shutdown 3",
        "written at startup 3",
    ]
    with pytest.raises(LifecycleStateError, match="PortsidePlugin"):
        get_lifecycle(app)


@pytest.mark.parametrize("which", ["own", "litestar"])
async def test_a_failing_app_lifespan_fails_startup(tmp_path: Path, which: str) -> None:
    attempts: list[Lifecycle] = []

    @asynccontextmanager
    async def failing_once(app: Litestar, *_: Any) -> AsyncIterator[None]:
        attempts.append(get_lifecycle(app))
        if len(attempts) == 1:
            raise KeyError("the app's own startup broke")
        yield

    if which == "own":
        app = Litestar(plugins=[PortsidePlugin(sqlite(tmp_path), lifespan=failing_once)])
    else:
        app = Litestar(plugins=[PortsidePlugin(sqlite(tmp_path))], lifespan=[failing_once])
    # Litestar's lifespan runs its event emitter's task group: the error comes grouped.
    broke = pytest.RaisesExc(KeyError, match="own startup broke")
    with pytest.RaisesGroup(broke, allow_unwrapped=True):
        async with run(app):
            pass
    assert not attempts[0].running  # the failed start's engines are gone
    async with run(app):  # the next startup builds fresh engines
        assert get_lifecycle(app).running
        assert get_lifecycle(app) is not attempts[0]


async def test_two_plugins_on_one_app_are_refused(tmp_path: Path) -> None:
    with pytest.raises(LifecycleStateError, match="more than one PortsidePlugin"):
        Litestar(
            plugins=[
                PortsidePlugin(sqlite(tmp_path)),
                PortsidePlugin(sqlite(tmp_path, "other"), readiness_path=None),
            ]
        )


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
    app = Litestar([], plugins=[PortsidePlugin(sqlite(tmp_path), **kwargs)])
    assert app.openapi_schema.paths in (None, {})
    async with run(app) as runner:
        if ready is not None:
            response = await runner.request("GET", ready)
            assert (response.status, response.json()["status"]) == (200, "ok")
            assert response.json()["databases"]["default"]["up"] is True
        if missing is not None:
            assert (await runner.request("GET", missing)).status == 404


# -- dependencies ---------------------------------------------------------------------------


async def test_custom_dependency_keys(tmp_path: Path) -> None:
    settings = sqlite(tmp_path)

    @post("/a")
    async def with_async(session: AsyncSessionDep, running: LifecycleDep) -> None:
        assert running is get_lifecycle(app)
        session.add(Item(name="a"))

    @post("/s", sync_to_thread=True)
    def with_sync(sync_session: SessionDep) -> None:
        sync_session.add(Item(name="s"))

    app = Litestar(
        [with_async, with_sync],
        plugins=[
            plugin(
                settings,
                session_dependency_key="session",
                sync_session_dependency_key="sync_session",
                lifecycle_dependency_key="running",
            )
        ],
    )
    assert not {"db_session", "sync_db_session", "lifecycle"} & set(app.dependencies)
    async with run(app) as runner:
        assert (await runner.request("POST", "/a")).status == 201
        assert (await runner.request("POST", "/s")).status == 201
    assert names_in(settings) == ["a", "s"]


async def test_disabled_dependency_keys(tmp_path: Path) -> None:
    app = Litestar(
        [],
        plugins=[
            PortsidePlugin(
                sqlite(tmp_path),
                session_dependency_key=None,
                sync_session_dependency_key=None,
                lifecycle_dependency_key=None,
            )
        ],
    )
    assert not {"db_session", "sync_db_session", "lifecycle"} & set(app.dependencies)


async def test_app_dependencies_win_over_the_plugin(tmp_path: Path) -> None:
    # An app-level provider under the same key is the user's choice; the plugin keeps out.
    main, other = sqlite(tmp_path), sqlite(tmp_path, "other")
    app = Litestar(
        [add_item],
        plugins=[plugin({"main": main, "other": other})],
        dependencies={"db_session": async_session_dependency("other")},
    )
    async with run(app) as runner:
        assert (await runner.request("POST", "/items")).status == 201
    assert names_in(main) == []
    assert names_in(other) == ["async"]


async def test_named_database_providers_write_to_that_database(tmp_path: Path) -> None:
    main, analytics = sqlite(tmp_path), sqlite(tmp_path, "analytics")

    @post("/both")
    async def both(
        db_session: AsyncSessionDep, analytics_session: AsyncSessionDep
    ) -> dict[str, bool]:
        db_session.add(Item(name="main"))
        analytics_session.add(Item(name="event"))
        return {"same": db_session is analytics_session}

    @post("/analytics/sync", sync_to_thread=True)
    def write_sync(sync_analytics: SessionDep) -> dict[str, int]:
        sync_analytics.add(Item(name="sync event"))
        sync_analytics.flush()
        return {"count": sync_analytics.exec(select(func.count()).select_from(Item)).one()}

    app = Litestar(
        [both, write_sync],
        plugins=[plugin({"main": main, "analytics": analytics})],
        dependencies={
            "analytics_session": async_session_dependency("analytics"),
            "sync_analytics": session_dependency("analytics"),
        },
    )
    async with run(app) as runner:
        response = await runner.request("POST", "/both")
        assert (response.status, response.json()) == (201, {"same": False})
        response = await runner.request("POST", "/analytics/sync")
        assert (response.status, response.json()) == (201, {"count": 2})
    assert names_in(main) == ["main"]
    assert names_in(analytics) == ["event", "sync event"]


# -- the lifecycle, in requests, websockets and the app ------------------------------------


async def test_get_lifecycle_from_a_request_a_websocket_and_the_app(tmp_path: Path) -> None:
    @get("/same")
    async def from_request(request: Request[Any, Any, State], lifecycle: LifecycleDep) -> bool:
        return get_lifecycle(request) is lifecycle is get_lifecycle(app)

    @websocket("/ws")
    async def from_websocket(socket: WebSocket[Any, Any, State], lifecycle: LifecycleDep) -> None:
        await socket.accept()
        async with lifecycle.async_session(writes=False) as session:
            count = len((await session.exec(select(Item))).all())
        same = get_lifecycle(socket) is lifecycle is get_lifecycle(app)
        await socket.send_json({"same": same, "items": count})
        await socket.close()

    app = Litestar([from_request, from_websocket], plugins=[plugin(sqlite(tmp_path))])
    with pytest.raises(LifecycleStateError, match="PortsidePlugin"):
        get_lifecycle(app)
    async with run(app) as runner:
        assert (await runner.request("GET", "/same")).json() is True
        async with runner.websocket("/ws") as socket:
            assert await socket.receive_json() == {"same": True, "items": 0}
        assert socket.error is None
        lifecycle = get_lifecycle(app)
        assert (lifecycle.in_flight, checked_out(lifecycle)) == (0, 0)
    assert not lifecycle.running
    with pytest.raises(LifecycleStateError, match="PortsidePlugin"):
        get_lifecycle(app)


# -- sync sessions on the event loop ----------------------------------------------------


async def test_a_sync_session_in_an_async_handler_raises_at_the_first_query(
    tmp_path: Path,
) -> None:
    settings = sqlite(tmp_path)
    raised: list[BaseException] = []

    @post("/on-the-loop")
    async def on_the_loop(sync_db_session: SessionDep) -> None:
        try:
            sync_db_session.add(Item(name="never"))  # its first use on the loop: refused
            sync_db_session.flush()
        except BaseException as exc:
            raised.append(exc)
            raise

    app = Litestar([on_the_loop], plugins=[plugin(settings)])
    async with run(app) as runner:
        response = await runner.request("POST", "/on-the-loop")
        assert response.status == 500
        assert [type(exc) for exc in raised] == [BlockingSessionError]
        lifecycle = get_lifecycle(app)
        assert (lifecycle.in_flight, checked_out(lifecycle)) == (0, 0)
    assert count_in(settings) == 0


# -- status and commit agree -------------------------------------------------------------


async def test_an_app_exception_handler_answering_202_commits(database: DatabaseSettings) -> None:
    def accept_anyway(request: Request[Any, Any, State], exc: Exception) -> Response[Any]:
        return Response({"accepted": str(exc)}, status_code=202)

    app = Litestar(
        [write_then_fail],
        plugins=[plugin(database)],
        exception_handlers={Exception: accept_anyway},
    )
    async with run(app) as runner:
        response = await runner.request("POST", "/fail")
        # The commit decision saw the 202 the client got.
        assert (response.status, response.json()) == (202, {"accepted": "after writing"})
        assert count_in(database) == 1
    assert names_in(database) == ["written"]


async def test_a_handler_raising_after_writing_answers_500_and_keeps_nothing(
    database: DatabaseSettings,
) -> None:
    app = Litestar([write_then_fail], plugins=[plugin(database)])
    async with run(app) as runner:
        assert (await runner.request("POST", "/fail")).status == 500
    assert count_in(database) == 0


async def test_database_errors_that_are_not_outages_keep_litestars_answer(
    tmp_path: Path,
) -> None:
    @post("/duplicate")
    async def duplicate(db_session: AsyncSessionDep) -> None:
        db_session.add_all([Item(name="twice"), Item(name="twice")])
        await db_session.flush()  # IntegrityError: a bug, not an outage (500, not 503)

    def on_500(request: Request[Any, Any, State], exc: Exception) -> Response[dict[str, str]]:
        return Response({"handled": type(exc).__name__}, status_code=500)

    plain = Litestar([duplicate], plugins=[plugin(sqlite(tmp_path))])
    custom = Litestar(
        [duplicate], plugins=[plugin(sqlite(tmp_path))], exception_handlers={500: on_500}
    )
    async with run(plain) as runner:
        response = await runner.request("POST", "/duplicate")
        assert (response.status, response.json()["detail"]) == (500, "Internal Server Error")
    async with run(custom) as runner:
        response = await runner.request("POST", "/duplicate")
        assert (response.status, response.json()) == (500, {"handled": "IntegrityError"})
    assert count_in(sqlite(tmp_path)) == 0


# -- several apps, the environment -----------------------------------------------------------


async def test_two_apps_started_at_once_get_their_own_engines(tmp_path: Path) -> None:
    first, second = sqlite(tmp_path, "first"), sqlite(tmp_path, "second")
    app_1 = Litestar([add_item], plugins=[plugin(first)])
    app_2 = Litestar([add_item_sync], plugins=[plugin(second)])
    async with run(app_1) as runner_1, run(app_2) as runner_2:
        lifecycle_1, lifecycle_2 = get_lifecycle(app_1), get_lifecycle(app_2)
        assert lifecycle_1 is not lifecycle_2
        assert lifecycle_1.database().engine is not lifecycle_2.database().engine
        assert (await runner_1.request("POST", "/items")).status == 201
        assert (await runner_2.request("POST", "/items/sync")).status == 201
    assert (names_in(first), names_in(second)) == (["async"], ["sync"])


async def test_no_settings_reads_the_environment_at_each_startup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = Litestar([], plugins=[PortsidePlugin()])
    for name in ("first", "second"):
        monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / name}.db")
        async with run(app):
            assert get_lifecycle(app).database().masked_url.endswith(f"{name}.db")
        assert (tmp_path / f"{name}.db").exists()


# -- the documented example ---------------------------------------------------------------


def test_the_module_docstring_example_runs(tmp_path: Path) -> None:
    # A subprocess: the example declares a table on SQLModel's global metadata. Its
    # own lifespan creates the table: nothing is prepared here.
    script = docstring_example(portside_litestar) + textwrap.dedent(
        """
        import anyio

        from portside_testing.asgi import AppRunner

        async def main() -> None:
            async with AppRunner(app) as client:
                for expected in (1, 2):
                    created = await client.request("POST", "/visits")
                    assert (created.status, created.json()) == (201, {"id": expected})
                health = await client.request("GET", "/health")
                assert (health.status, health.json()["status"]) == (200, "ok")
            async with AppRunner(app) as client:  # started again: fresh engines
                assert (await client.request("POST", "/visits")).json() == {"id": 3}

        anyio.run(main)
        print("example ok")
        """
    )
    result = subprocess.run(
        [
            sys.executable,
            "-W",
            "error",
            "-W",
            "ignore:The declarative_mixin decorator:DeprecationWarning",
            "-c",
            script,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "example ok"
