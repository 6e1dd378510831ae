"""Retried requests: the body replayed, the limits kept, the statuses documented.

The database itself raises the serialization failure (``RAISE ... USING ERRCODE``),
so the failure is PostgreSQL's own SQLSTATE 40001 through the real driver.
"""

from __future__ import annotations

import pytest
from sqlalchemy import text
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

import portside_starlette
from portside import DatabaseSettings, RetryPolicy
from portside_testing import AppRunner

pytestmark = pytest.mark.anyio

LOSE = "DO $$ BEGIN RAISE EXCEPTION 'lost a race' USING ERRCODE = '40001'; END $$"


def build(settings: DatabaseSettings, failures: int) -> tuple[Starlette, list[bytes]]:
    """An app whose routes fail ``failures`` times with 40001, then echo their body."""
    bodies: list[bytes] = []

    async def flaky(request: Request) -> JSONResponse:
        body = await request.body()
        bodies.append(body)
        session = await portside_starlette.async_session(request)
        if len(bodies) <= failures:
            await session.exec(text(LOSE))
        return JSONResponse({"size": len(body)})

    policy = RetryPolicy(attempts=3, backoff=0.001, max_body=1000)
    app = Starlette(
        routes=[
            Route(
                "/retried", portside_starlette.transaction(retries=policy)(flaky), methods=["POST"]
            ),
            Route("/once", flaky, methods=["POST"]),
        ]
    )
    portside_starlette.install(app, settings)
    return app, bodies


@pytest.fixture
def settings(postgresql_url: str) -> DatabaseSettings:
    return DatabaseSettings(url=postgresql_url, engines="async")


async def test_the_body_is_replayed_to_each_attempt(settings: DatabaseSettings) -> None:
    app, bodies = build(settings, failures=2)
    async with AppRunner(app) as runner:
        response = await runner.request("POST", "/retried", json={"payload": "x" * 100})
    assert response.status == 200, response.text
    assert len(bodies) == 3
    assert bodies[0] == bodies[1] == bodies[2]
    assert response.json() == {"size": len(bodies[0])}


async def test_attempts_run_out_into_409_with_retry_after(settings: DatabaseSettings) -> None:
    app, bodies = build(settings, failures=10)
    async with AppRunner(app) as runner:
        response = await runner.request("POST", "/retried", json={})
    assert response.status == 409
    assert response.header("retry-after") == "1"
    assert len(bodies) == 3


async def test_a_body_over_the_limit_is_not_retried(settings: DatabaseSettings) -> None:
    app, bodies = build(settings, failures=1)
    async with AppRunner(app) as runner:
        response = await runner.request("POST", "/retried", json={"payload": "x" * 2000})
    assert response.status == 409
    assert len(bodies) == 1


async def test_without_the_opt_in_the_conflict_is_answered_once(settings: DatabaseSettings) -> None:
    app, bodies = build(settings, failures=1)
    async with AppRunner(app) as runner:
        response = await runner.request("POST", "/once", json={})
    assert response.status == 409
    assert response.header("retry-after") == "1"
    assert len(bodies) == 1
