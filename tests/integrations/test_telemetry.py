"""Telemetry through each integration: exact counts after a scripted mix of requests.

Each app has the same three routes: ``/items/{item_id}`` (reads, 200: commit),
``/missing/{item_id}`` (reads, returns 404: rollback) and ``/hold`` (reads, then
awaits something else while keeping its connection: a held connection). With a pool
of one, a request arriving while ``/hold`` waits times out (503, substituted).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import anyio
import pytest
from fastapi import FastAPI
from litestar import Litestar, get
from litestar import Response as LitestarResponse
from litestar.params import FromPath
from opentelemetry import trace
from sqlalchemy import text
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import portside_fastapi
import portside_litestar
import portside_starlette
from portside import AsyncSession, DatabaseSettings
from portside_testing.asgi import AppRunner
from tests.otel_support import (
    FASTAPI_TRACES,
    STARLETTE_NAMES_ROUTES,
    delta,
    providers,
    snapshot,
    spans,
    value,
)

ROUTES_KNOWN = {"fastapi": True, "litestar": True, "starlette": STARLETTE_NAMES_ROUTES}

POOL = "db.client.connection.pool.name"


class Script:
    """What the handlers share with the test: when /hold holds, when to let go."""

    def __init__(self) -> None:
        self.holding = anyio.Event()
        self.release = anyio.Event()

    async def read(self, session: AsyncSession) -> None:
        await session.exec(text("SELECT 1"))

    async def hold(self, session: AsyncSession) -> None:
        await self.read(session)
        self.holding.set()
        await self.release.wait()


def starlette_app(settings: DatabaseSettings, script: Script) -> Any:
    async def item(request: Request) -> JSONResponse:
        await script.read(await portside_starlette.async_session(request))
        return JSONResponse({"ok": True})

    async def missing(request: Request) -> JSONResponse:
        await script.read(await portside_starlette.async_session(request))
        return JSONResponse({"detail": "no such item"}, status_code=404)

    async def hold(request: Request) -> JSONResponse:
        await script.hold(await portside_starlette.async_session(request))
        return JSONResponse({"ok": True})

    app = Starlette(
        routes=[
            Route("/items/{item_id}", item),
            Route("/missing/{item_id}", missing),
            Route("/hold", hold),
        ]
    )
    portside_starlette.install(app, settings)
    return app


def fastapi_app(settings: DatabaseSettings, script: Script) -> Any:
    app = FastAPI()

    @app.get("/items/{item_id}")
    async def item(item_id: int, session: portside_fastapi.AsyncSessionDep) -> dict[str, bool]:
        await script.read(session)
        return {"ok": True}

    @app.get("/missing/{item_id}")
    async def missing(item_id: int, session: portside_fastapi.AsyncSessionDep) -> JSONResponse:
        await script.read(session)
        return JSONResponse({"detail": "no such item"}, status_code=404)

    @app.get("/hold")
    async def hold(session: portside_fastapi.AsyncSessionDep) -> dict[str, bool]:
        await script.hold(session)
        return {"ok": True}

    portside_fastapi.install(app, settings)
    return app


def litestar_app(settings: DatabaseSettings, script: Script) -> Any:
    @get("/items/{item_id:int}")
    async def item(
        item_id: FromPath[int], db_session: portside_litestar.AsyncSessionDep
    ) -> dict[str, bool]:
        await script.read(db_session)
        return {"ok": True}

    @get("/missing/{item_id:int}")
    async def missing(
        item_id: FromPath[int], db_session: portside_litestar.AsyncSessionDep
    ) -> LitestarResponse[dict[str, str]]:
        await script.read(db_session)
        return LitestarResponse({"detail": "no such item"}, status_code=404)

    @get("/hold")
    async def hold(db_session: portside_litestar.AsyncSessionDep) -> dict[str, bool]:
        await script.hold(db_session)
        return {"ok": True}

    return Litestar(
        route_handlers=[item, missing, hold],
        plugins=[portside_litestar.PortsidePlugin(settings)],
    )


APPS: dict[str, Callable[[DatabaseSettings, Script], Any]] = {
    "starlette": starlette_app,
    "fastapi": fastapi_app,
    "litestar": litestar_app,
}


@pytest.mark.anyio
@pytest.mark.postgresql
@pytest.mark.parametrize("framework", list(APPS))
async def test_scripted_requests_give_exact_counts(postgresql_url: str, framework: str) -> None:
    providers()
    tracer = trace.get_tracer("test")
    name = f"t{uuid.uuid4().hex[:8]}"
    settings = DatabaseSettings(
        url=postgresql_url.replace("postgres@", "postgres:sekrit-pw@"),
        engines="async",
        telemetry=True,
        pool_size=1,
        max_overflow=0,
        pool_timeout=0.2,
        held_connection_threshold=0.1,
    )
    script = Script()
    app = APPS[framework]({name: settings}, script)
    statuses: list[int] = []

    async def request(runner: AppRunner, path: str) -> None:
        # The framework's request span, as an ASGI instrumentation would start it.
        with tracer.start_as_current_span(f"GET {path}"):
            statuses.append((await runner.request("GET", path)).status)

    async with AppRunner(app) as runner:
        before = snapshot()
        first_unit = len(spans("portside unit of work"))
        await request(runner, "/items/1")
        await request(runner, "/items/2")
        await request(runner, "/missing/3")
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(request, runner, "/hold")
            await script.holding.wait()
            await request(runner, "/items/4")  # no connection within 0.2 s: 503
            script.release.set()
        changes = delta(before, snapshot())

    assert statuses == [200, 200, 404, 503, 200]
    database = {"portside.database": name}
    pool = {POOL: f"{name}.async"}
    assert value(changes, "portside.unit_of_work.commits", **database) == 3
    assert value(changes, "portside.unit_of_work.rollbacks", **database) == 2
    assert value(changes, "db.client.connection.timeouts", **pool) == 1
    held_route = {"http.route": "/hold"} if ROUTES_KNOWN[framework] else {}
    assert value(changes, "portside.connection.held", **pool, **held_route) == 1
    assert value(changes, "portside.error_responses", **{"http.response.status_code": 503}) == 1
    assert value(changes, "db.client.connection.wait_time", **pool) == 4

    units = spans("portside unit of work")[first_unit:]
    assert [u.attributes["portside.unit_of_work.outcome"] for u in units] == [
        "commit",
        "commit",
        "rollback",
        "rollback",
        "commit",
    ]
    routes = [u.attributes.get("http.route") for u in units]
    templates = ["/items/{item_id}"] * 2 + ["/missing/{item_id}", "/items/{item_id}", "/hold"]
    assert routes == (templates if ROUTES_KNOWN[framework] else [None] * 5)
    # Each unit's span descends from its request's span: the test's, or the server
    # span FastAPI starts itself (named after the route), with FastAPI's dependency
    # spans in between.
    finished = {s.context.span_id: s for s in providers()[1].get_finished_spans()}

    def request_of(span: Any) -> str:
        while span.parent is not None:
            span = finished[span.parent.span_id]
        return str(span.name)

    expected = ["/items/1", "/items/2", "/missing/3", "/items/4", "/hold"]
    if framework == "fastapi" and FASTAPI_TRACES:
        expected = templates
    assert [request_of(u) for u in units] == [f"GET {path}" for path in expected]
    seen = repr(changes) + repr([dict(u.attributes or {}) for u in units])
    assert "sekrit-pw" not in seen
