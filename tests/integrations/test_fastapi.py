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
from fastapi import BackgroundTasks, Depends, FastAPI, Request
from sqlmodel import select
from starlette.middleware import Middleware

import portside_fastapi
from portside import AsyncSession, ConfigurationError, DatabaseSettings, Lifecycle, Session
from portside.asgi import LIFECYCLE_STATE_KEY
from portside_fastapi import (
    AsyncSessionDep,
    LifecycleDep,
    UnitOfWorkMiddleware,
    async_session_dependency,
    lifespan,
    session_dependency,
)
from portside_testing.asgi import AppRunner
from portside_testing.conformance.models import Item, metadata

from .docstrings import docstring_example

pytestmark = pytest.mark.anyio


def sqlite(tmp_path: Path, name: str = "app") -> DatabaseSettings:
    return DatabaseSettings(url=f"sqlite:///{tmp_path / name}.db")


async def create_tables(lifecycle: Lifecycle, name: str | None = None) -> None:
    engine = lifecycle.database(name).async_
    assert engine is not None
    async with engine.engine.begin() as connection:
        await connection.run_sync(metadata.create_all)


async def names_in(lifecycle: Lifecycle, name: str | None = None) -> list[str]:
    async with lifecycle.async_session(name, writes=False) as session:
        return sorted((await session.exec(select(Item.name))).all())


def new_app(databases: Any, **kwargs: Any) -> FastAPI:
    app = FastAPI(lifespan=lifespan(databases, **kwargs))
    app.add_middleware(UnitOfWorkMiddleware)
    return app


# -- wrap= ---------------------------------------------------------------------------


async def test_wrap_runs_the_app_lifespan_inside_ours_and_merges_its_state(
    tmp_path: Path,
) -> None:
    events: list[str] = []
    seen: list[Lifecycle] = []

    @asynccontextmanager
    async def app_lifespan(app: FastAPI) -> AsyncIterator[dict[str, Any]]:
        events.append("app startup")
        yield {"greeting": "hello"}
        # Ours exits after the app's: the databases are still up here.
        events.append(f"app shutdown, databases running={seen[0].running}")

    app = new_app(sqlite(tmp_path), wrap=app_lifespan)

    @app.post("/greet")
    async def greet(
        request: Request, session: AsyncSessionDep, lifecycle: LifecycleDep
    ) -> dict[str, str]:
        seen.append(lifecycle)
        session.add(Item(name=request.state.greeting))
        return {"greeting": request.state.greeting}

    async with AppRunner(app) as runner:
        assert set(runner.state) == {"greeting", LIFECYCLE_STATE_KEY}
        await create_tables(runner.state[LIFECYCLE_STATE_KEY])
        response = await runner.request("POST", "/greet")
        assert (response.status, response.json()) == (200, {"greeting": "hello"})
        assert await names_in(seen[0]) == ["hello"]
    assert events == ["app startup", "app shutdown, databases running=True"]
    assert not seen[0].running


async def test_wrap_accepts_a_lifespan_that_yields_no_state(tmp_path: Path) -> None:
    events: list[str] = []

    @asynccontextmanager
    async def app_lifespan(app: FastAPI) -> AsyncIterator[None]:
        events.append("startup")
        yield
        events.append("shutdown")

    async with AppRunner(new_app(sqlite(tmp_path), wrap=app_lifespan)) as runner:
        assert set(runner.state) == {LIFECYCLE_STATE_KEY}
    assert events == ["startup", "shutdown"]


async def test_a_failing_app_lifespan_fails_startup(tmp_path: Path) -> None:
    attempts: list[int] = []

    @asynccontextmanager
    async def app_lifespan(app: FastAPI) -> AsyncIterator[None]:
        attempts.append(1)
        if len(attempts) == 1:
            raise KeyError("the app's own startup broke")
        yield

    app = new_app(sqlite(tmp_path), wrap=app_lifespan)
    with pytest.raises(KeyError, match="own startup broke"):
        async with AppRunner(app):
            pass
    async with AppRunner(app) as runner:  # the next startup builds fresh engines
        assert runner.state[LIFECYCLE_STATE_KEY].running


# -- the middleware check --------------------------------------------------------------


async def test_startup_without_the_middleware_fails_and_says_what_to_add(
    tmp_path: Path,
) -> None:
    app = FastAPI(lifespan=lifespan(sqlite(tmp_path)))
    with pytest.raises(ConfigurationError) as caught:
        async with AppRunner(app):
            pass
    assert "app.add_middleware(portside_fastapi.UnitOfWorkMiddleware)" in str(caught.value)
    assert not (tmp_path / "app.db").exists()  # failed before any engine was built


async def test_middleware_given_to_the_constructor_counts(tmp_path: Path) -> None:
    app = FastAPI(
        lifespan=lifespan(sqlite(tmp_path)), middleware=[Middleware(UnitOfWorkMiddleware)]
    )
    async with AppRunner(app) as runner:
        assert runner.state[LIFECYCLE_STATE_KEY].running


# -- databases -------------------------------------------------------------------------


async def test_no_settings_reads_the_environment_at_each_startup(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    app = new_app(None)
    for name in ("first", "second"):
        monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / name}.db")
        async with AppRunner(app):
            pass
        assert (tmp_path / f"{name}.db").exists()


AnalyticsSession = Annotated[AsyncSession, Depends(async_session_dependency("analytics"))]
SyncAnalyticsSession = Annotated[Session, Depends(session_dependency("analytics"))]


async def test_named_database_dependencies_write_to_that_database(tmp_path: Path) -> None:
    app = new_app({"default": sqlite(tmp_path), "analytics": sqlite(tmp_path, "analytics")})

    @app.post("/async/{name}", status_code=201)
    async def write_async(name: str, session: AnalyticsSession) -> None:
        session.add(Item(name=name))

    @app.post("/sync/{name}", status_code=201)
    def write_sync(name: str, session: SyncAnalyticsSession) -> None:
        session.add(Item(name=name))

    async with AppRunner(app) as runner:
        lifecycle: Lifecycle = runner.state[LIFECYCLE_STATE_KEY]
        await create_tables(lifecycle)
        await create_tables(lifecycle, "analytics")
        assert (await runner.request("POST", "/async/a")).status == 201
        assert (await runner.request("POST", "/sync/b")).status == 201
        assert await names_in(lifecycle, "analytics") == ["a", "b"]
        assert await names_in(lifecycle) == []


def test_dependencies_for_one_name_are_one_callable() -> None:
    # FastAPI caches a dependency per request by its callable.
    assert async_session_dependency("analytics") is async_session_dependency("analytics")
    assert session_dependency("analytics") is session_dependency("analytics")


async def test_a_background_task_opens_its_own_unit_of_work(tmp_path: Path) -> None:
    app = new_app(sqlite(tmp_path))

    async def record(lifecycle: Lifecycle, name: str) -> None:
        async with lifecycle.async_session() as session:
            session.add(Item(name=name))

    @app.post("/later/{name}", status_code=202)
    async def later(name: str, lifecycle: LifecycleDep, tasks: BackgroundTasks) -> None:
        tasks.add_task(record, lifecycle, name)

    async with AppRunner(app) as runner:
        lifecycle: Lifecycle = runner.state[LIFECYCLE_STATE_KEY]
        await create_tables(lifecycle)
        assert (await runner.request("POST", "/later/x")).status == 202
        assert await names_in(lifecycle) == ["x"]


# -- the documented example ---------------------------------------------------------------


def test_the_module_docstring_example_runs(tmp_path: Path) -> None:
    # A subprocess: the example declares a table on SQLModel's global metadata.
    script = docstring_example(portside_fastapi) + textwrap.dedent(
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
                assert (created.status, created.json()["name"]) == (201, "Deadpond")
                listed = await client.request("GET", "/health")
                assert (listed.status, listed.json()["status"]) == (200, "ok")
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
